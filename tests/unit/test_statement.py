"""The signed statement: RFC 8785 canonical JSON, ed25519 and HMAC signatures over every field,
keys as agents are given them, and what an agent holding only the public key can do."""

from __future__ import annotations

import base64
import dataclasses
import hmac
import json
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from flowstore.artifacts import signing, statement
from flowstore.artifacts.signing import KeyFormatError, SignatureError
from flowstore.artifacts.statement import Statement, canonical_json

HMAC_KEY = b"k3y-for-signing-flows-0123456789"


def private_pem(key: ed25519.Ed25519PrivateKey | None = None) -> bytes:
    key = key or ed25519.Ed25519PrivateKey.generate()
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def public_pem(private: bytes) -> bytes:
    key = serialization.load_pem_private_key(private, password=None)
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def a_statement(**changes: object) -> Statement:
    base = Statement(
        namespace="data", stored_flow="etl-daily", uid="6f1c2d3e-0000-4000-8000-000000000001", flow_name="etl daily",
        revision=3, designation=5, digest="sha256:" + "ab" * 32, size=2048, format="pickle",
        storage={"type": "S3", "bucket": "flows", "endpointURL": "http://127.0.0.1:9000", "region": "eu-west-1",
                 "keyPrefix": "prod/", "storedAsScript": False, "secrets": []},
        location="prod/etl-daily/2026-11-26t10-00-00-000000-00-00", stored_at="2026-11-26T10:00:00Z")
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


# ---------------------------------------------------------------------- RFC 8785
def test_canonical_json_is_rfc8785_on_the_rfcs_own_example():
    # RFC 8785 section 3.2.2: the example input and its canonical form
    text = ('{"numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001], '
            '"string": "\\u20ac$\\u000F\\u000aA\'\\u0042\\u0022\\u005c\\\\\\"\\/", "literals": [null, true, false]}')
    expected = ('{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],'
                '"string":"€$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}')
    assert canonical_json(json.loads(text)) == expected.encode("utf-8")


def test_canonical_json_sorts_members_by_utf16_code_units():
    # RFC 8785 section 3.2.3: the emoji (a surrogate pair, D83D) sorts before U+FB33, which a sort
    # by code points would put first
    doc = {"\u20ac": "Euro Sign", "\r": "Carriage Return", "\ufb33": "Hebrew Letter Dalet With Dagesh",
           "1": "One", "\U0001f600": "Emoji: Grinning Face", "\u0080": "Control",
           "\u00f6": "Latin Small Letter O With Diaeresis"}
    keys = [json.loads(f"[{k}]")[0] for k in canonical_json(doc).decode().strip("{}").split(",")
            for k in [k.split(":")[0]]]
    assert keys == ["\r", "1", "\u0080", "\u00f6", "\u20ac", "\U0001f600", "\ufb33"]


@pytest.mark.parametrize(("value", "text"), [
    # RFC 8785 appendix B (IEEE 754 values and their ECMAScript forms)
    (0.0, "0"), (-0.0, "0"), (5e-324, "5e-324"), (1.7976931348623157e308, "1.7976931348623157e+308"),
    (9007199254740992.0, "9007199254740992"), (-9007199254740992.0, "-9007199254740992"),
    (295147905179352830000.0, "295147905179352830000"), (9.999999999999997e22, "9.999999999999997e+22"),
    (1e23, "1e+23"), (1e21, "1e+21"), (999999999999999700000.0, "999999999999999700000"),
    (0.000001, "0.000001"), (1e-7, "1e-7"), (333333333.3333333, "333333333.3333333"), (4.5, "4.5"),
])
def test_canonical_numbers_are_ecmascripts(value: float, text: str):
    assert canonical_json(value) == text.encode()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 2**53, {1: "x"}, "\ud800", b"bytes"])
def test_canonical_json_refuses_what_has_no_exact_form(bad: object):
    with pytest.raises(ValueError):
        canonical_json(bad)


# ---------------------------------------------------------------------- signing and verifying
def test_ed25519_statement_verifies_with_the_public_key_only():
    pem = private_pem()
    signer = signing.signer_from_secret(pem, "ed25519", where="Secret 'sig'")
    signed = statement.sign(a_statement(), signer)
    assert signed.signature.startswith("ed25519:") and signed.key_id == signer.key_id
    keys = signing.public_keys(public_pem(pem), where="test")
    assert statement.verify(a_statement(), signed.signature, signed.key_id, keys, what="etl").key_id == signer.key_id
    assert not hasattr(keys[0], "sign")


@pytest.mark.parametrize("change", [
    {"namespace": "other"}, {"stored_flow": "another-flow"}, {"uid": "6f1c2d3e-0000-4000-8000-000000000002"},
    {"flow_name": "etl nightly"}, {"revision": 2}, {"designation": 4}, {"digest": "sha256:" + "cd" * 32},
    {"size": 2049}, {"format": "script"}, {"location": "prod/etl-daily/older"}, {"stored_at": "2026-11-25T10:00:00Z"},
    {"storage": {"type": "S3", "bucket": "attacker", "endpointURL": "http://127.0.0.1:9000", "region": "eu-west-1",
                 "keyPrefix": "prod/", "storedAsScript": False, "secrets": []}},
    {"storage": {"type": "S3", "bucket": "flows", "endpointURL": "http://evil.example", "region": "eu-west-1",
                 "keyPrefix": "prod/", "storedAsScript": False, "secrets": []}},
])
def test_every_field_is_covered(change: dict[str, object]):
    pem = private_pem()
    signed = statement.sign(a_statement(), signing.signer_from_secret(pem, "ed25519", where="s"))
    keys = signing.public_keys(public_pem(pem), where="test")
    with pytest.raises(SignatureError, match="does not match"):
        statement.verify(a_statement(**change), signed.signature, signed.key_id, keys, what="etl")


def test_a_worker_holding_only_the_public_key_cannot_produce_a_valid_signature():
    pem = private_pem()
    public = public_pem(pem)
    keys = signing.public_keys(public, where="worker")
    raw_public = serialization.load_pem_public_key(public).public_bytes(serialization.Encoding.Raw,
                                                                        serialization.PublicFormat.Raw)
    forged = a_statement(digest="sha256:" + "ee" * 32)
    message = forged.message()
    attempts = [
        # the public key's bytes used as a private key's seed: another key pair altogether
        "ed25519:" + base64.b64encode(ed25519.Ed25519PrivateKey.from_private_bytes(raw_public).sign(message)).decode(),
        # the public key (PEM or raw) used as an HMAC key
        "hmac-sha256:" + hmac.new(public, message, "sha256").hexdigest(),
        "hmac-sha256:" + hmac.new(raw_public, message, "sha256").hexdigest(),
        # a signature of another statement, and garbage of the right length
        statement.sign(a_statement(), signing.signer_from_secret(pem, "ed25519", where="s")).signature,
        "ed25519:" + base64.b64encode(bytes(64)).decode(),
    ]
    for signature in attempts:
        with pytest.raises(SignatureError):
            statement.verify(forged, signature, keys[0].key_id, keys, what="forged")
    # and a public key given where the private key belongs is refused, not used
    with pytest.raises(KeyFormatError, match="does not hold an ed25519 private key"):
        signing.signer_from_secret(public, "ed25519", where="Secret 'sig'")


def test_hmac_statements_are_the_weaker_kind_but_cover_the_same_fields():
    signer = signing.signer_from_secret(HMAC_KEY, None, where="s")
    assert signer.provider == "hmac" and signer.key_id == signing.hmac_key_id(HMAC_KEY)
    signed = statement.sign(a_statement(), signer)
    verifier = signing.hmac_verifier(HMAC_KEY)
    assert statement.verify(a_statement(), signed.signature, signed.key_id, [verifier], what="etl") is verifier
    with pytest.raises(SignatureError, match="does not match"):
        statement.verify(a_statement(namespace="x"), signed.signature, signed.key_id, [verifier], what="etl")
    # an HMAC verifier *can* sign (that is why it is weaker): the same secret makes the same signature
    assert verifier.verify(a_statement().message(), signer.sign(a_statement().message()))


def test_unknown_key_unsigned_and_old_style_signatures_say_what_to_do():
    pem, other = private_pem(), private_pem()
    signed = statement.sign(a_statement(), signing.signer_from_secret(pem, "ed25519", where="s"))
    others = signing.public_keys(public_pem(other), where="test")
    with pytest.raises(SignatureError, match="which this agent does not hold"):
        statement.verify(a_statement(), signed.signature, signed.key_id, others, what="etl")
    with pytest.raises(SignatureError, match="is not signed"):
        statement.verify(a_statement(), None, None, others, what="etl")
    with pytest.raises(SignatureError, match="old-style signature"):
        statement.verify(a_statement(), "hmac-sha256:" + "0" * 64, None, [signing.hmac_verifier(HMAC_KEY)],
                         what="etl")


def test_rotation_several_keys_verify_and_the_key_id_is_only_a_hint():
    old, new = private_pem(), private_pem()
    signed = statement.sign(a_statement(), signing.signer_from_secret(new, "ed25519", where="s"))
    keys = signing.verifiers_from([public_pem(old).decode(), public_pem(new).decode()])
    assert len(keys) == 2
    # a status whose keyId was edited still verifies with the key that signed it
    assert statement.verify(a_statement(), signed.signature, "ed25519:0000000000000000", keys, what="etl")


def test_dsse_envelope_holds_the_canonical_statement():
    pem = private_pem()
    signed = statement.sign(a_statement(), signing.signer_from_secret(pem, "ed25519", where="s"))
    env = statement.envelope(a_statement(), signed)
    payload = base64.b64decode(env["payload"])
    assert json.loads(payload)["_type"] == statement.STATEMENT_TYPE and payload == a_statement().canonical()
    public = serialization.load_pem_public_key(public_pem(pem))
    public.verify(base64.b64decode(env["signatures"][0]["sig"]), statement.pae(env["payloadType"], payload))


def test_signed_storage_leaves_out_flows_labels_and_nulls():
    doc = {"type": "S3", "bucket": "flows", "region": None, "labels": ["prod"], "flows": {"etl": "k"},
           "buildResponse": {"id": 1, "gone": None}}
    assert statement.signed_storage(doc) == {"type": "S3", "bucket": "flows", "buildResponse": {"id": 1}}


# ---------------------------------------------------------------------- keys as agents get them
def test_openssh_keys_work_on_both_sides(tmp_path: Path):
    key = tmp_path / "id"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    signer = signing.signer_from_secret(key.read_bytes(), None, where="s")
    assert signer.provider == "ed25519"
    keys = signing.verifiers_from(str(key) + ".pub")  # a file's path
    assert keys[0].key_id == signer.key_id
    signed = statement.sign(a_statement(), signer)
    statement.verify(a_statement(), signed.signature, signed.key_id, keys, what="etl")


def test_verify_key_from_the_environment(tmp_path: Path):
    pem = private_pem()
    path = tmp_path / "flowstore.pub"
    path.write_bytes(public_pem(pem))
    assert signing.verifiers_from(environ={}) == []
    assert len(signing.verifiers_from(environ={"FLOWSTORE_VERIFY_KEY": public_pem(pem).decode()})) == 1
    assert len(signing.verifiers_from(environ={"FLOWSTORE_VERIFY_KEY": str(path)})) == 1
    with pytest.raises(KeyFormatError, match="set but empty"):
        signing.verifiers_from(environ={"FLOWSTORE_VERIFY_KEY": " "})
    with pytest.raises(KeyFormatError, match="cannot read the key file"):
        signing.verifiers_from(environ={"FLOWSTORE_VERIFY_KEY": str(tmp_path / "missing.pub")})
    with pytest.raises(KeyFormatError, match="private key"):
        signing.verifiers_from(environ={"FLOWSTORE_VERIFY_KEY": pem.decode()})


def test_signing_keys_that_cannot_work_are_refused():
    with pytest.raises(KeyFormatError, match="shorter than 16"):
        signing.signer_from_secret(b"short", "hmac", where="s")
    with pytest.raises(KeyFormatError, match="provider is hmac"):
        signing.signer_from_secret(private_pem(), "hmac", where="s")
    from cryptography.hazmat.primitives.asymmetric import ec

    p256 = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    with pytest.raises(KeyFormatError, match="not an ed25519 key"):
        signing.signer_from_secret(p256, "ed25519", where="s")
