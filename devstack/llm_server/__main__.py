"""`python -m devstack.llm_server --port P`: run the local LLM server in the foreground."""

import os


def main() -> None:
    # llama.cpp's OpenMP threads spin while waiting by default; on a CPU shared with the rest of the
    # stack that spinning starves them (2 threads: ~8 tokens/s instead of ~45 measured). Must be set
    # before llama_cpp loads, hence the late import.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from devstack.llm_server.app import serve
    from devstack.llm_server.config import parse_args

    serve(parse_args())


main()
