"""Roll a model version out, or back: `python -m server.rollout {rollout,rollback,status} --help`.

`roll_out(V)`: the NRMS encoders' version V must be in Triton's repository (`python -m export models`
adds it). The first rollout adopts the unversioned catalog as version `rollout.base_version`. It loads V
next to the live versions (explicit model control, a `specific` version policy sent with the load
request; a Triton restart falls back to the repository's own policy), creates `<news>_v<V>`, points
`<news>_staging` at it and waits for the gateways to follow (from then on they write each news upsert
to it too), re-encodes every item of the control's collection with V's news encoder, checks the result
(row count equals the control's; every vector finite and non-zero; ANN top-10 recall against brute
force over a sample), and only then moves `<news>_control` to it atomically (`<news>_previous` to the
old control). A failed check leaves serving as it was. `roll_back()` swaps control and previous.
The aliases and what the gateway does with them: `server.versions`.

Known limit: an item re-encoded from a row read just before a concurrent upsert of the same id may
overwrite the upsert's newer vector in the new collection (the next upsert of that id repairs it).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import tritonclient.grpc as triton_grpc
from numpy.typing import NDArray
from pymilvus import MilvusClient

import contract
from contract import layout
from contract.schemas import ID, NEWS_FIELDS, VECTOR
from contract.tokenizer import TextTokenizer
from server.config import Settings, load_settings
from server.milvus.schema import METRIC, CollectionSpec, HnswParams, ensure_collection
from server.versions import CONTROL, PREVIOUS, STAGING, Serving, alias, collection, is_news, resolve

PROBE_K = 10
COPY_FIELDS = [ID, *(field.name for field in NEWS_FIELDS)]


class RolloutCheckFailed(RuntimeError):
    """The new version's collection failed its check; serving was not switched."""


class NewsEncoders(Protocol):
    """What a rollout needs of Triton: load versions of the NRMS encoders, encode titles with one."""

    def load(self, versions: Sequence[int]) -> None: ...

    def encode_titles(self, version: int, titles: list[str]) -> NDArray[np.float32]: ...


@dataclass(frozen=True)
class Check:
    """What the new collection was checked for."""

    rows: int
    expected_rows: int
    degenerate_vectors: int  # non-finite or all-zero
    recall: float
    min_recall: float

    @property
    def passed(self) -> bool:
        return self.rows == self.expected_rows and self.degenerate_vectors == 0 and self.recall >= self.min_recall


class Rollout:
    """Moves the serving aliases of one news collection (`milvus.news_collection`)."""

    def __init__(self, settings: Settings, encoders: NewsEncoders, settle_s: float | None = None) -> None:
        """`settle_s`: how long gateways get to notice the staging alias (default: 3 alias refreshes)."""
        self.settings, self.encoders = settings, encoders
        self.base = settings.milvus.news_collection
        self.settle_s = 3 * settings.rollout.refresh_s if settle_s is None else settle_s
        m = settings.milvus
        self.client = MilvusClient(uri=m.uri, token=m.token, user=m.user, password=m.password, timeout=m.timeout_s)

    def serving(self) -> Serving:
        """The aliases as the gateways resolve them."""
        return resolve(self.aliases(), self.base, self.settings.rollout)

    def aliases(self) -> dict[str, str]:
        found: dict[str, str] = {}
        for name in (n for n in self.client.list_collections() if is_news(n, self.base)):
            found.update(dict.fromkeys(self.client.list_aliases(name)["aliases"], name))
        return found

    def roll_out(self, version: int, min_recall: float = 0.9, probe: int = 50) -> Check:
        """Build, check and serve `version`; raises RolloutCheckFailed (nothing switched) when the check fails."""
        serving, target = self._adopt_base(), collection(self.base, version)
        self.encoders.load(sorted({version, *(int(v.triton_version) for v in serving.written if v.triton_version)}))
        dim = self.encoders.encode_titles(version, ["dimension probe"]).shape[1]
        hnsw = HnswParams(self.settings.milvus.hnsw_m, self.settings.milvus.hnsw_ef_construction)
        ensure_collection(
            self.client, CollectionSpec(target, dim, NEWS_FIELDS), hnsw, self.settings.milvus.setup_timeout_s
        )
        self._point(STAGING, target)
        time.sleep(self.settle_s)  # gateways now write news upserts to the new collection too
        ids, vectors = self._copy(serving.control.collection, target, version)
        check = self._check(serving.control.collection, target, ids, vectors, min_recall, probe)
        if not check.passed:
            self.client.drop_alias(alias(self.base, STAGING))
            raise RolloutCheckFailed(f"version {version} not switched: {check}")
        self._point(PREVIOUS, serving.control.collection)
        self._point(CONTROL, target)
        self.client.drop_alias(alias(self.base, STAGING))
        return check

    def _adopt_base(self) -> Serving:
        """Before the first rollout, name the unversioned catalog's version (`rollout.base_version`) by pointing
        the control alias at it, and let gateways follow before a second version is loaded into Triton: until
        then they ask Triton for its newest version, which would become the new one."""
        if alias(self.base, CONTROL) not in self.aliases():
            self._point(CONTROL, self.base)
            time.sleep(self.settle_s)
        return self.serving()

    def roll_back(self) -> Serving:
        """Serve the previous version again (and keep the current one as the next rollback's target)."""
        aliases = self.aliases()
        previous = aliases.get(alias(self.base, PREVIOUS))
        if previous is None:
            raise RuntimeError(f"nothing to roll back to: no alias {alias(self.base, PREVIOUS)}")
        current = aliases.get(alias(self.base, CONTROL), self.base)
        self._point(CONTROL, previous)
        self._point(PREVIOUS, current)
        return self.serving()

    def _point(self, slot: str, target: str) -> None:
        name = alias(self.base, slot)
        if name in self.aliases():
            self.client.alter_alias(target, name)
        else:
            self.client.create_alias(target, name)

    def _copy(self, source: str, target: str, version: int) -> tuple[list[str], NDArray[np.float32]]:
        """Re-encode every row of `source` into `target`; returns the ids and vectors written."""
        self.client.load_collection(source)  # a no-op when loaded (Milvus Lite releases collections on reopen)
        ids: list[str] = []
        vectors: list[NDArray[np.float32]] = []
        for rows in self._pages(source):
            encoded = self.encoders.encode_titles(version, [row["title"] for row in rows])
            self.client.upsert(
                target, [{**row, VECTOR: vector.tolist()} for row, vector in zip(rows, encoded, strict=True)]
            )
            ids += [row[ID] for row in rows]
            vectors.append(encoded)
        return ids, np.concatenate(vectors) if vectors else np.zeros((0, 0), np.float32)

    def _pages(self, source: str) -> Iterator[list[dict[str, Any]]]:
        batch = self.settings.milvus.read_batch_ids
        iterator = self.client.query_iterator(source, batch_size=batch, output_fields=COPY_FIELDS)
        try:
            while rows := iterator.next():
                yield [{name: row[name] for name in COPY_FIELDS} for row in rows]
        finally:
            iterator.close()

    def _check(
        self, source: str, target: str, ids: list[str], vectors: NDArray[np.float32], min_recall: float, probe: int
    ) -> Check:
        expected, rows = self._count(source), self._count(target)
        degenerate = int(np.sum(~np.isfinite(vectors).all(axis=1) | ~vectors.any(axis=1))) if len(ids) else 0
        return Check(rows, expected, degenerate, self._recall(target, ids, vectors, probe), min_recall)

    def _count(self, name: str) -> int:
        result = self.client.query(name, filter="", output_fields=["count(*)"], consistency_level="Strong")
        return int(result[0]["count(*)"])

    def _recall(self, target: str, ids: list[str], vectors: NDArray[np.float32], probe: int) -> float:
        """Mean overlap of Milvus's top-k with the exact top-k by inner product, for sampled item vectors as queries."""
        if not ids or not np.isfinite(vectors).all():
            return 0.0
        k = min(PROBE_K, len(ids))
        sample = random.Random(0).sample(range(len(ids)), min(probe, len(ids)))
        queries = vectors[sample]
        exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :k]
        params = {"metric_type": METRIC, "params": {"ef": max(k, self.settings.milvus.search_ef)}}
        found = self.client.search(
            target, data=queries.tolist(), limit=k, search_params=params, consistency_level="Strong"
        )
        overlaps = [
            len({hit["id"] for hit in hits} & {ids[i] for i in row}) / k for hits, row in zip(found, exact, strict=True)
        ]
        return float(np.mean(overlaps))

    def close(self) -> None:
        self.client.close()


class TritonNewsEncoders:
    """`NewsEncoders` over Triton's gRPC API (the gateway's settings: URL, TLS, model names, tokenizer)."""

    def __init__(self, settings: Settings) -> None:
        t = settings.triton
        self.settings, self.batch = t, settings.gateway.encode_batch
        self.tokenizer = TextTokenizer.from_file(layout.tokenizer_file(t.tokenizer_dir, contract.TITLE))
        self.client = triton_grpc.InferenceServerClient(
            t.url,
            ssl=t.ssl,
            root_certificates=_text(t.ssl_root_certificates),
            private_key=_text(t.ssl_private_key),
            certificate_chain=_text(t.ssl_certificate_chain),
        )

    def load(self, versions: Sequence[int]) -> None:
        """Serve exactly `versions` of the NRMS news and user encoders (loaded versions keep serving meanwhile)."""
        for model in (self.settings.news_encoder, self.settings.user_encoder):
            config = self.client.get_model_config(model, as_json=True)["config"]
            config["version_policy"] = {"specific": {"versions": [str(v) for v in versions]}}
            self.client.load_model(model, config=json.dumps(config))

    def encode_titles(self, version: int, titles: list[str]) -> NDArray[np.float32]:
        """Titles' vectors by `version`'s news encoder, in requests of at most `gateway.encode_batch` titles."""
        size = self.batch
        return np.concatenate([self._encode(version, titles[i : i + size]) for i in range(0, len(titles), size)])

    def _encode(self, version: int, titles: list[str]) -> NDArray[np.float32]:
        ids, mask = self.tokenizer.encode(titles)
        inputs = []
        for name, array in ((contract.INPUT_IDS, ids), (contract.ATTENTION_MASK, mask)):
            tensor = triton_grpc.InferInput(name, list(array.shape), "INT64")
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        result = self.client.infer(
            self.settings.news_encoder,
            inputs,
            model_version=str(version),
            outputs=[triton_grpc.InferRequestedOutput(contract.EMBEDDING)],
            client_timeout=self.settings.timeout_s * 10,
        )
        return np.asarray(result.as_numpy(contract.EMBEDDING), dtype=np.float32)


def _text(path: Any) -> str | None:
    return str(path) if path is not None else None


def describe(serving: Serving) -> str:
    slots = {"control": serving.control, "candidate": serving.candidate}
    lines = [f"{slot}: {v.collection} (triton version {v.label})" for slot, v in slots.items() if v is not None]
    return "\n".join([*lines, "written: " + ", ".join(v.collection for v in serving.written)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m server.rollout", description=__doc__.split("\n")[0])
    parser.add_argument("--config", help="YAML settings file, as for the gateway (default: built-in + RECSTACK_*)")
    commands = parser.add_subparsers(dest="command", required=True)
    rollout = commands.add_parser("rollout", help="build, check and serve a model version")
    rollout.add_argument("--version", type=int, required=True, help="Triton version of the NRMS encoders")
    rollout.add_argument("--min-recall", type=float, default=0.9, help="ANN top-10 recall the check needs")
    commands.add_parser("rollback", help="serve the previous version again")
    commands.add_parser("status", help="which versions serve and receive writes")
    args = parser.parse_args(argv)
    settings = load_settings(args.config)
    rollout_ = Rollout(settings, TritonNewsEncoders(settings))
    try:
        if args.command == "rollout":
            print(rollout_.roll_out(args.version, args.min_recall))
        elif args.command == "rollback":
            rollout_.roll_back()
        print(describe(rollout_.serving()))
    except RolloutCheckFailed as error:
        print(error)
        return 1
    finally:
        rollout_.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
