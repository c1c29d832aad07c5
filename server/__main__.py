"""`python -m server`: run the gateway (see `server.app`)."""

from server.app import main

main()
