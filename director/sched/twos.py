"""Power of two choices (ip_vs_twos.c).

total = sum of the weights of non-OVERLOAD dests with weight > 0, plus 1.
Draw r1, r2 = rand32 % total; walk those dests subtracting each weight, and
take as choice1 (choice2) the first dest where r1 (r2) drops to <= 0.
Return choice2 if weight2*overhead1 > weight1*overhead2 (WLC overhead),
else choice1.  The random source is the injected `self.rng`
(prandom_u32 in the kernel).
"""
from director.sched import Flow, Scheduler, register


@register
class PowerOfTwoChoices(Scheduler):
    name = "twos"

    def schedule(self, flow: Flow):
        cands = [d for d in self.dests if not d.overloaded and d.weight > 0]
        if not cands:
            return None
        total = sum(d.weight for d in cands) + 1
        r1 = self.rng.getrandbits(32) % total
        r2 = self.rng.getrandbits(32) % total
        c1 = c2 = None
        for d in cands:
            w = d.weight
            r1 -= w
            r2 -= w
            if r1 <= 0 and c1 is None:
                c1 = d
            if r2 <= 0 and c2 is None:
                c2 = d
            if c1 is not None and c2 is not None:
                break
        # r1, r2 <= total - 1 = sum of weights, so both are always found.
        assert c1 is not None and c2 is not None
        if c2.weight * c1.overhead > c1.weight * c2.overhead:
            return c2
        return c1
