"""The label app with MONAI Label's authentication on, offline: a stand-in for the Keycloak realm on 127.0.0.1 serves
a public key, tokens are signed here with its private key, and the server checks them (RS256) and their roles."""

from __future__ import annotations

import base64
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests

from label_server import ROOT, LabelServer, small_bundles

pytest.importorskip("monailabel")
jwt = pytest.importorskip("jwt")
serialization = pytest.importorskip("cryptography.hazmat.primitives.serialization")
from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: E402

CT = ROOT / "data" / "totalseg_ct_abdomen" / "example_ct_sm.nii.gz"
ROLES = {"admin": "monailabel-admin", "annotator": "monailabel-annotator", "user": "monailabel-user"}


def realm(public_key: str) -> ThreadingHTTPServer:
    """A realm endpoint answering like Keycloak's ``/realms/<name>``: the public key, base64 DER on one line."""

    class Realm(BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"realm": "monailabel", "public_key": public_key}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Realm)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    root = tmp_path_factory.mktemp("auth")
    (root / "studies").mkdir()
    (root / "studies" / "ct.nii.gz").write_bytes(CT.read_bytes())
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    keycloak = realm(base64.b64encode(der).decode())
    realm_uri = f"http://127.0.0.1:{keycloak.server_address[1]}/realms/monailabel"
    env = {"MONAI_LABEL_AUTH_ENABLE": "true", "MONAI_LABEL_AUTH_REALM_URI": realm_uri}
    bundles = small_bundles(root / "bundles")
    server = LabelServer(root / "studies", {"bundles": str(bundles)}, root / "server.log", env=env,
                         headers=token(key, ROLES["user"], expires_in=3600)).start()  # fmt: skip
    server.bundles = bundles
    yield server, key
    server.stop()
    keycloak.shutdown()


def token(key, *roles: str, expires_in: float = 600) -> dict[str, str]:
    claims = {"preferred_username": "tester", "realm_access": {"roles": list(roles)}, "exp": int(time.time() + expires_in)}
    return {"Authorization": f"Bearer {jwt.encode(claims, key, algorithm='RS256')}"}


def test_requests_without_a_valid_token_are_refused(secured):
    server, key = secured
    assert requests.get(f"{server.url}/info/", timeout=30).status_code == 401
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert requests.get(f"{server.url}/info/", headers=token(other_key, *ROLES.values()), timeout=30).status_code == 401
    expired = token(key, *ROLES.values(), expires_in=-60)
    assert requests.get(f"{server.url}/info/", headers=expired, timeout=30).status_code == 401


def test_roles_decide_what_a_token_may_do(secured):
    server, key = secured
    user, annotator, admin = (token(key, ROLES[r]) for r in ("user", "annotator", "admin"))
    assert requests.get(f"{server.url}/info/", headers=user, timeout=30).ok
    upload = {"file": ("x.nii.gz", CT.read_bytes())}
    assert requests.put(f"{server.url}/datastore/image", params={"image": "x"}, files=upload, headers=user,
                        timeout=60).status_code == 403  # fmt: skip
    assert requests.get(f"{server.url}/datastore/dataset", headers=user, timeout=60).status_code == 403
    assert requests.get(f"{server.url}/logs/", headers=annotator, timeout=30).status_code == 403
    assert requests.post(f"{server.url}/train/spleen_ct_segresmamba", json={}, headers=annotator,
                         timeout=30).status_code == 403  # fmt: skip
    assert requests.get(f"{server.url}/datastore/dataset", headers=annotator, timeout=60).status_code == 404  # empty
    ct = nib.load(CT)
    label = Path(server.log).parent / "label.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(ct.shape, np.uint8), ct.affine), label)
    saved = requests.put(f"{server.url}/datastore/label", params={"image": "ct", "tag": "final"},
                         files={"label": ("ct.nii.gz", label.read_bytes())}, headers=annotator, timeout=60)  # fmt: skip
    assert saved.ok, saved.text
    dataset = requests.get(f"{server.url}/datastore/dataset", headers=annotator, timeout=120)
    assert dataset.ok and dataset.content[:2] == b"PK"  # a ZIP archive
    logs = requests.get(f"{server.url}/logs/", params={"text": True}, headers=admin, timeout=30)
    assert logs.ok and "ZIP archive will be written" in logs.text  # the dataset download just above
    assert "WARNING: serving on" not in server.log_tail(2000)


def test_only_an_admin_deletes(secured, tmp_path):
    """Deleting weights, images and labels needs an admin's token (MONAI Label lets annotators delete weights)."""
    server, key = secured
    annotator, admin = token(key, ROLES["annotator"]), token(key, *ROLES.values())
    ct = nib.load(CT)
    label = tmp_path / "gone.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(ct.shape, np.uint8), ct.affine), label)
    upload = requests.put(f"{server.url}/datastore/image", params={"image": "gone"},
                          files={"file": ("gone.nii.gz", CT.read_bytes())}, headers=admin, timeout=60)  # fmt: skip
    assert upload.ok, upload.text
    saved = requests.put(f"{server.url}/datastore/label", params={"image": "gone", "tag": "final"},
                         files={"label": ("gone.nii.gz", label.read_bytes())}, headers=annotator, timeout=60)  # fmt: skip
    assert saved.ok, saved.text
    model = f"{server.url}/model/spleen_ct_segresmamba"
    for url, params in ((model, {}), (f"{server.url}/datastore/image", {"id": "gone"}),
                        (f"{server.url}/datastore/label", {"id": "gone", "tag": "final"})):  # fmt: skip
        assert requests.delete(url, params=params, headers=annotator, timeout=30).status_code == 403
    assert requests.delete(model, headers=admin, timeout=30).status_code == 404  # no weights to delete
    bad = requests.delete(f"{server.url}/datastore/label", params={"id": "../gone", "tag": "final"}, headers=admin,
                          timeout=30)  # fmt: skip
    assert bad.status_code == 400
    removed = requests.delete(f"{server.url}/datastore/label", params={"id": "gone", "tag": "final"}, headers=admin,
                              timeout=30)  # fmt: skip
    assert removed.ok, removed.text
    objects = requests.get(f"{server.url}/datastore/", params={"output": "all"}, headers=admin, timeout=30).json()
    assert "gone" in objects["objects"] and not objects["objects"]["gone"]["labels"]
    assert requests.delete(f"{server.url}/datastore/image", params={"id": "gone"}, headers=admin, timeout=30).ok
    objects = requests.get(f"{server.url}/datastore/", params={"output": "all"}, headers=admin, timeout=30).json()
    assert "gone" not in objects["objects"]
    missing = requests.delete(f"{server.url}/datastore/image", params={"id": "gone"}, headers=admin, timeout=30)
    assert missing.status_code == 404


def test_only_an_admin_uploads_weights_that_fit_and_the_old_ones_stay(secured, tmp_path):
    """``PUT /model``: an admin's upload replaces the weights atomically once it loads into the network with
    ``weights_only`` and ``strict``; anything else is 422 and changes nothing; the weights replaced are kept."""
    import os
    import pickle

    import torch

    server, key = secured
    annotator, admin = token(key, ROLES["annotator"]), token(key, *ROLES.values())
    model = "spleen_ct_segresmamba"
    weights = server.bundles / model / "models" / "model.pt"
    marker = tmp_path / "unpickled"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    def put(path: Path, headers: dict[str, str]) -> requests.Response:
        return requests.put(f"{server.url}/model/{model}", files={"file": (path.name, path.read_bytes())},
                            headers=headers, timeout=120)  # fmt: skip

    from custom_nets.bundle import Bundle

    torch.manual_seed(0)
    state = Bundle(model, server.bundles / model).parser("inference").get_parsed_content("network_def").state_dict()
    evil, wrong, missing, good = (tmp_path / f"{name}.pt" for name in ("evil", "wrong", "missing", "good"))
    evil.write_bytes(pickle.dumps(Payload()))
    torch.save({**state, "stem.weight": torch.zeros(3)}, wrong)
    torch.save(dict(list(state.items())[1:]), missing)
    torch.save({"model": state}, good)

    assert put(good, annotator).status_code == 403 and not weights.exists()
    for upload, words in ((evil, "weights_only"), (wrong, "size mismatch"), (missing, "Missing key")):
        response = put(upload, admin)
        assert response.status_code == 422 and words in response.text and "unchanged" in response.text, response.text
        assert not weights.exists()
    assert not marker.exists()
    assert not weights.parent.exists() or not list(weights.parent.iterdir())  # no temporary left behind

    assert put(good, admin).ok
    saved = torch.load(weights, weights_only=True)  # stored as a plain state dict, whatever wrapped it
    assert saved.keys() == state.keys() and all(torch.equal(saved[k], state[k]) for k in state)
    first = weights.read_bytes()
    torch.save({k: v + 1 if v.is_floating_point() else v for k, v in state.items()}, good)
    assert put(good, admin).ok
    aside = [p for p in weights.parent.iterdir() if p.name != "model.pt"]
    assert len(aside) == 1 and aside[0].name.endswith(".replaced") and aside[0].read_bytes() == first
    assert weights.read_bytes() != first
