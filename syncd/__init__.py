"""Connection-state sync to the peer, sans-IO sender and receiver with a thin transport (the election is in ha/)."""
