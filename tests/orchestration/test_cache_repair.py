"""Issue 20 point 7: a damaged result that Prefect's cache points to is recomputed and the registry repaired."""

import os

from dode.store.lambdas import LAMBDAS_FILE
from dode.store.registry import Registry


def test_an_edited_lambdas_file_is_recomputed_and_repaired(prefect_harness, tmp_path):
    from flows.stages import distill_flow

    common = {"model": "mixture-smooth", "solver": "euler", "nfe": 3, "teacher_factor": 2, "n_distill": 16,
              "batch_size": 16, "registry": str(tmp_path / "registry")}
    lam = distill_flow(**common)["lambdas"]
    stored = tmp_path / "registry" / "artifacts" / lam / "files" / LAMBDAS_FILE
    original = stored.read_bytes()
    os.chmod(stored, 0o644)
    stored.write_bytes(original.replace(b"0.", b"9.", 1))  # an edit: same manifest, other bytes
    assert Registry(common["registry"]).verify() != []
    assert distill_flow(**common)["lambdas"] == lam  # the cache is not trusted: recomputed, same content
    assert stored.read_bytes() == original and Registry(common["registry"]).verify() == []
