#!/usr/bin/env python3
"""Known-answer vectors for encryption at rest, made with independent implementations
(pyca/cryptography and PyNaCl) from the byte layouts kube-apiserver documents and uses. The
Rust tests in src/encryption read these values back; run this script to regenerate
encryption_vectors.json (the output changes every run: nonces are random)."""
import base64, json, os
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives import padding, hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
import nacl.secret

AD = b"/registry/secrets/default/s1"
PLAIN = b'{"kind":"Secret","apiVersion":"v1","data":{"k":"dg=="}}'
KEY16 = bytes(range(16))
KEY32 = bytes(range(32))

def varint(n):
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])

def field(num, wire, payload):
    tag = varint((num << 3) | wire)
    if wire == 2:
        return tag + varint(len(payload)) + payload
    return tag + varint(payload)

gcm_nonce = os.urandom(12)
aesgcm = b"k8s:enc:aesgcm:v1:g1:" + gcm_nonce + AESGCM(KEY16).encrypt(gcm_nonce, PLAIN, AD)

iv = os.urandom(16)
p = padding.PKCS7(128).padder()
padded = p.update(PLAIN) + p.finalize()
e = Cipher(algorithms.AES(KEY32), modes.CBC(iv)).encryptor()
aescbc = b"k8s:enc:aescbc:v1:c1:" + iv + e.update(padded) + e.finalize()

secretbox = b"k8s:enc:secretbox:v1:s1:" + bytes(nacl.secret.SecretBox(KEY32).encrypt(PLAIN))

# KMS v2 (KDF): the plugin's key-encryption key wraps the seed as the bundled plugin does
# (nonce || AES-256-GCM, the key id as associated data).
kek = os.urandom(32)
seed = os.urandom(32)
wrap_nonce = os.urandom(12)
encrypted_seed = wrap_nonce + AESGCM(kek).encrypt(wrap_nonce, seed, b"kek-1")
info = os.urandom(32)
dek = HKDFExpand(hashes.SHA256(), 32, info).derive(seed)
nonce = os.urandom(12)
data = info + nonce + AESGCM(dek).encrypt(nonce, PLAIN, AD)
obj = field(1, 2, data) + field(2, 2, b"kek-1") + field(3, 2, encrypted_seed) + field(5, 0, 1)
kms = b"k8s:enc:kms:v2:local:" + obj

b64 = lambda b: base64.b64encode(b).decode()
print(json.dumps({
    "ad": AD.decode(), "plain": PLAIN.decode(),
    "key16": b64(KEY16), "key32": b64(KEY32), "kek": b64(kek),
    "aesgcm": b64(aesgcm), "aescbc": b64(aescbc), "secretbox": b64(secretbox), "kms": b64(kms),
}, indent=1))
