// Checks a tds log entry in the browser, trusting nothing but the math and the log's key:
// the checkpoint's Ed25519 note signature (c2sp.org/signed-note), then the entry's
// RFC 9162 inclusion proof up to the checkpoint's root. Mirrors connector/audit/note.py,
// checkpoint.py and merkle.py (verify_inclusion). Every failure throws with a reason.
"use strict";
(function () {
  const enc = new TextEncoder();

  function fromB64(text) {
    if (!/^[A-Za-z0-9+/]*={0,2}$/.test(text)) throw new Error("malformed base64");
    return Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
  }

  function concat(...parts) {
    const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const p of parts) { out.set(p, at); at += p.length; }
    return out;
  }

  async function sha256(...parts) {
    return new Uint8Array(await crypto.subtle.digest("SHA-256", concat(...parts)));
  }

  function equal(a, b) {
    return a.length === b.length && a.every((x, i) => x === b[i]);
  }

  // A signed note: text up to the blank line, then "— name base64(keyid||sig)" lines.
  function parseNote(note) {
    const split = note.indexOf("\n\n");
    if (split < 0) throw new Error("checkpoint is not a signed note (no blank line)");
    const text = note.slice(0, split + 1);
    const signatures = note.slice(split + 2).split("\n").filter((l) => l !== "").map((line) => {
      if (!line.startsWith("\u2014 ")) throw new Error("malformed signature line");
      const [name, blob] = line.slice(2).split(" ");
      const raw = fromB64(blob || "");
      if (raw.length < 5) throw new Error("signature line too short");
      return { name, keyId: raw.slice(0, 4), signature: raw.slice(4) };
    });
    return { text, signatures };
  }

  function parseCheckpoint(text) {
    const lines = text.split("\n");
    if (lines.length < 4 || lines[lines.length - 1] !== "") throw new Error("malformed checkpoint");
    if (!/^(0|[1-9][0-9]*)$/.test(lines[1])) throw new Error("checkpoint size is not a number");
    const root = fromB64(lines[2]);
    if (root.length !== 32) throw new Error("checkpoint root is not 32 bytes");
    return { origin: lines[0], size: Number(lines[1]), root };
  }

  // RFC 9162 §2.1.3.2, as connector/audit/merkle.py verify_inclusion.
  async function rootFromProof(leaf, index, size, proof) {
    if (!(0 <= index && index < size)) throw new Error(`index ${index} outside a tree of size ${size}`);
    let fn = index, sn = size - 1, r = leaf;
    for (const p of proof) {
      if (p.length !== 32) throw new Error("proof hash is not 32 bytes");
      if (sn === 0) throw new Error("inclusion proof is longer than the tree is deep");
      if (fn % 2 === 1 || fn === sn) {
        r = await sha256(Uint8Array.of(1), p, r);
        if (fn % 2 === 0) {
          while (fn % 2 === 0 && fn !== 0) { fn = Math.floor(fn / 2); sn = Math.floor(sn / 2); }
        }
      } else {
        r = await sha256(Uint8Array.of(1), r, p);
      }
      fn = Math.floor(fn / 2); sn = Math.floor(sn / 2);
    }
    if (sn !== 0) throw new Error("inclusion proof is too short for the tree size");
    return r;
  }

  // evidence: {index, body, proof[], checkpoint, origin, public_key} as /api/evidence gives.
  async function verifyEntry(evidence) {
    const publicKey = fromB64(evidence.public_key);
    if (publicKey.length !== 32) throw new Error("log key is not an Ed25519 key");
    const note = parseNote(evidence.checkpoint);
    const cp = parseCheckpoint(note.text);
    if (cp.origin !== evidence.origin) throw new Error(`checkpoint is for ${cp.origin}, not ${evidence.origin}`);
    // The key ID is computed here, not taken from the server: SHA-256(name \n 0x01 key)[:4].
    const keyId = (await sha256(enc.encode(evidence.origin + "\n"), Uint8Array.of(1), publicKey)).slice(0, 4);
    const mine = note.signatures.filter((s) => s.name === evidence.origin && equal(s.keyId, keyId));
    if (mine.length === 0) throw new Error("checkpoint carries no signature by the log's key");
    const key = await crypto.subtle.importKey("raw", publicKey, { name: "Ed25519" }, false, ["verify"]);
    for (const s of mine) {
      const ok = await crypto.subtle.verify({ name: "Ed25519" }, key, s.signature, enc.encode(note.text));
      if (!ok) throw new Error("checkpoint signature does not verify");
    }
    const body = fromB64(evidence.body);
    const leaf = await sha256(Uint8Array.of(0), body);
    const root = await rootFromProof(leaf, evidence.index, cp.size, evidence.proof.map(fromB64));
    if (!equal(root, cp.root)) throw new Error("inclusion proof does not lead to the checkpoint's root: the entry is not the one the log signed");
    return { size: cp.size, body: new TextDecoder().decode(body) };
  }

  window.tdsVerify = { verifyEntry, parseNote, parseCheckpoint };
})();
