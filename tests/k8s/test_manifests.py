"""k8s/ is the chart rendered with default values (release and namespace maskfleet; the Redis
password Secret is created by the user, see scripts/render_manifests.py), ready
for `kubectl apply -f k8s/`; it fails here as soon as someone changes the chart without
running `make manifests`, or edits k8s/ by hand."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import yaml

from tests.k8s.cases import Manifest
from tests.k8s.conftest import REPO

K8S = REPO / "k8s"


def test_k8s_dir_matches_the_chart(render_script: ModuleType) -> None:
    files = render_script.manifest_files(
        render_script.render_objects(render_script.MANIFEST_VALUES))
    stale = render_script.stale_files(K8S, files)
    assert not stale, f"k8s/ drifted from the chart, run `make manifests`: {stale}"


def test_drift_is_detected(render_script: ModuleType, tmp_path: Path) -> None:
    """Guards the test above: a hand edit, a missing and an extra file are all reported."""
    files = render_script.manifest_files(
        render_script.render_objects(render_script.MANIFEST_VALUES))
    render_script.write(tmp_path, files)
    assert render_script.stale_files(tmp_path, files) == []
    deployment = tmp_path / "09-deployment.yaml"
    deployment.write_text(deployment.read_text().replace("/readyz", "/ready"))
    (tmp_path / "07-service.yaml").unlink()
    (tmp_path / "99-extra.yaml").write_text("kind: Secret\n")
    assert render_script.stale_files(tmp_path, files) == [
        "07-service.yaml", "09-deployment.yaml", "99-extra.yaml"]
    assert render_script.main(["--check", "--out", str(tmp_path)]) == 1


def test_k8s_dir_holds_what_kubectl_apply_needs(defaults: list[Manifest]) -> None:
    applied = [d for f in sorted(K8S.glob("*.yaml"))
               for d in yaml.safe_load_all(f.read_text()) if d]
    assert applied[0] == {"apiVersion": "v1", "kind": "Namespace",
                          "metadata": {"name": "maskfleet"}}
    assert applied[1:]
    assert all(o["metadata"]["namespace"] == "maskfleet" for o in applied[1:])
    key = lambda o: (o["kind"], o["metadata"]["name"])  # noqa: E731
    # k8s/ expects the API keys Secret to exist (render_manifests.MANIFEST_VALUES); Helm
    # generates it (and the plaintext key's Secret) by default
    generated = {("Secret", "maskfleet-api-keys"), ("Secret", "maskfleet-api-key-admin"),
                 ("Secret", "maskfleet-redis-auth")}
    assert generated <= set(map(key, defaults))
    assert sorted(map(key, applied[1:])) == sorted(k for k in map(key, defaults)
                                                   if k not in generated)
    assert not [o for o in applied if o["kind"] == "Secret"]
    names = [o["metadata"]["name"] for o in applied if o["kind"] == "CronJob"]
    assert names == ["maskfleet-retrain"]
