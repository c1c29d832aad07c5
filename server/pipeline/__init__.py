"""The gateway's request pipelines, one small stage per job (see each module's docstring)."""
