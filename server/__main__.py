"""`python -m server`: run the gateway (`server.launch`); `python -m server token NAME [SCOPE ...]` mints a token."""

import sys

if sys.argv[1:2] == ["token"]:
    from server.auth import main as mint

    mint(sys.argv[2:])
else:
    from server.launch import main

    main()
