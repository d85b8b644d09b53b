"""`tandem ipvsadm` blames a bad argument, not the API's answer (issue 17, item 13).

ipvsadm itself refuses a malformed `-t`/`-u` service before it talks to the kernel
(`parse_service` -> "Illegal virtual server address[:port] specified"); so does
`tandem ipvsadm`, before it talks to the node, as argparse reports a bad argument."""
from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from tests.unit.test_ipvsadm import driven_engine, serve

#: argument -> what the command says about it (its last stderr line, after "error: ")
BAD_ARGUMENTS = [
    (["-t", "bogus"], "argument -t/--tcp-service: must be VIP:PORT ([v6]:port for IPv6) with a "
                      "port 1..65535, got 'bogus'"),
    (["-t", "198.18.0.100"], "argument -t/--tcp-service: must be VIP:PORT ([v6]:port for IPv6) "
                             "with a port 1..65535, got '198.18.0.100'"),
    (["-t", "198.18.0.100:http"], "argument -t/--tcp-service: must be VIP:PORT ([v6]:port for "
                                  "IPv6) with a port 1..65535, got '198.18.0.100:http'"),
    (["-u", "198.18.0.300:80"], "argument -u/--udp-service: '198.18.0.300' is not an IP address "
                                "(in '198.18.0.300:80')"),
    (["-u", "[2001:2::1]:99999"], "argument -u/--udp-service: must be VIP:PORT ([v6]:port for "
                                  "IPv6) with a port 1..65535, got '[2001:2::1]:99999'"),
    (["--timeout", "-1"], "argument --timeout: must be a number of seconds > 0, got '-1'"),
    (["--timeout", "nan"], "argument --timeout: must be a number of seconds > 0, got 'nan'"),
    (["--rate", "--interval", "0"], "argument --interval: must be a number of seconds > 0, "
                                    "got '0'"),
]


def tandem(*argv: str) -> subprocess.CompletedProcess:
    """The real command line, as an operator runs it."""
    return subprocess.run([sys.executable, "-m", "tandem.cli", "ipvsadm", *argv],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("argv, said", BAD_ARGUMENTS)
async def test_a_bad_argument_is_named_before_the_api_is_asked(argv, said):
    """Before: `-t bogus` reached the node and failed on the answer, as
    "unexpected API answer: ValueError(\"invalid literal for int() ...\")"."""
    runner, url = await serve(driven_engine())
    try:
        got = await asyncio.to_thread(tandem, "-L", "-n", *argv, "--api", url)
    finally:
        await runner.cleanup()
    assert got.returncode == 2 and got.stdout == ""
    assert got.stderr.splitlines()[-1] == f"tandem ipvsadm: error: {said}"
    assert "API" not in got.stderr and "Traceback" not in got.stderr


@pytest.mark.parametrize("api", ["nothing", "ftp://198.18.0.11:9100", "http://127.0.0.1:99999",
                                 "http://:9100"])
def test_a_bad_api_url_is_named(api):
    got = tandem("-L", "--api", api)
    assert got.returncode == 2
    assert got.stderr.splitlines()[-1] == (
        f"tandem ipvsadm: error: argument --api: must be http://HOST:PORT (the node's `api`), "
        f"got '{api}'")


async def test_the_apis_own_words_are_passed_on():
    """An error answer of the node is printed with its `Error` message, not only the status;
    a service the node does not have is ipvsadm's "No such service"."""
    runner, url = await serve(driven_engine())
    try:
        got = await asyncio.to_thread(tandem, "-L", "--api", url + "/nodeapi")
        assert got.returncode == 1
        assert got.stderr == (f"tandem ipvsadm: {url}/nodeapi/services: HTTP 404 Not Found: "
                              "no such path: /nodeapi/services\n")
        got = await asyncio.to_thread(tandem, "-L", "-t", "198.18.0.1:80", "--api", url)
        assert got.returncode == 1 and got.stderr == "tandem ipvsadm: No such service\n"
    finally:
        await runner.cleanup()
