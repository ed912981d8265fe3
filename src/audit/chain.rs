//! Tamper evidence: a hash chain over the audit trail's exact line bytes,
//! and signed checkpoints. The field names and the signed message are a
//! public contract (docs/audit.md, "Tamper evidence"); `audit verify` checks them.
//!
//! The writer thread, which alone decides the order of lines, puts three
//! fields at the front of every record as it writes it:
//!
//! - `instance`: 32 hex digits, random per gateway process;
//! - `seq`: 1, 2, 3, ... within the instance (checkpoints included);
//! - `prev`: the SHA-256, in hex, of the previous line's exact bytes
//!   without its newline: the line before it in the file, whichever
//!   instance wrote it. The first line of a trail has 64 zeros.
//!
//! A new instance chains to the last complete line already in the file, so
//! restarts keep the chain whole; its first line also says which line that
//! was (`resumes`: the instance and `seq` it names), so a verifier can tell
//! a cut-off tail from a changed line; a SIGHUP reopen (rotation) keeps it in
//! memory, so the new file's first line names the old file's last. Editing,
//! deleting, inserting or reordering a line breaks the chain at that line.
//!
//! With `audit.signing_key`, a `stage: "checkpoint"` line signs, with
//! Ed25519, [`checkpoint_message`]: the instance, the checkpoint's own
//! `seq`, and its `prev` (the hash of the line before it), so it vouches
//! for every line up to it. A verifier needs only the public key.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::Engine as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivatePkcs8KeyDer;

use crate::notes::hex;

/// `prev` of a trail's very first line.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The SHA-256 of a line, without its newline, in hex: the next line's
/// `prev`.
pub fn line_hash(line: &[u8]) -> String {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, line).as_ref())
}

/// What a checkpoint signs: it vouches for the line with hash `prev` and so,
/// through the chain, for every line before it.
pub fn checkpoint_message(instance: &str, seq: u64, prev: &str) -> Vec<u8> {
    format!("polytomic-gateway audit checkpoint v1\n{instance}\n{seq}\n{prev}\n").into_bytes()
}

/// `audit.signing_key`: an Ed25519 private key. Never printed: its `Debug`
/// shows the public key's id only.
pub struct Signer {
    key: Ed25519KeyPair,
    /// SubjectPublicKeyInfo DER of the public key.
    spki: Vec<u8>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("key_id", &key_id(&self.spki))
            .finish_non_exhaustive()
    }
}

/// A short id of a public key (its SPKI's SHA-256, first 16 hex digits),
/// written in each checkpoint so a verifier can tell which key signed.
pub fn key_id(spki: &[u8]) -> String {
    line_hash(spki)[..16].to_owned()
}

impl Signer {
    /// Reads a PKCS#8 Ed25519 private key in PEM (`-----BEGIN PRIVATE
    /// KEY-----`, as `openssl genpkey -algorithm ed25519` writes it). The
    /// error says what is wrong without any of the key's bytes.
    pub fn from_pem(pem: &[u8]) -> Result<Self, String> {
        let der = PrivatePkcs8KeyDer::from_pem_slice(pem).map_err(|_| {
            "is not a PEM PKCS#8 private key (-----BEGIN PRIVATE KEY-----)".to_owned()
        })?;
        let key = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der.secret_pkcs8_der())
            .map_err(|_| "is not an Ed25519 private key".to_owned())?;
        let spki = key
            .public_key()
            .as_der()
            .map_err(|_| "cannot encode its public key".to_owned())?
            .as_ref()
            .to_vec();
        Ok(Self { key, spki })
    }

    /// The public key as PEM (SubjectPublicKeyInfo, as `openssl pkey
    /// -pubout` writes it), for `audit verify --public-key`.
    pub fn public_key_pem(&self) -> String {
        let b64 = base64::engine::general_purpose::STANDARD.encode(&self.spki);
        format!("-----BEGIN PUBLIC KEY-----\n{b64}\n-----END PUBLIC KEY-----\n")
    }

    fn sign(&self, message: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.key.sign(message).as_ref())
    }
}

/// When checkpoints are written.
#[derive(Debug)]
pub struct Checkpoints {
    /// The key that signs them.
    pub signer: Signer,
    /// `audit.checkpoint_interval`: at most this long after a record.
    pub interval: Duration,
    /// `audit.checkpoint_records`: at most this many records apart.
    pub records: u64,
}

/// The writer's end of the chain.
#[derive(Debug)]
pub(crate) struct Chain {
    instance: String,
    /// The `seq` of the last line written; 0 before the first.
    seq: u64,
    /// The hash of the last line in the trail.
    prev: String,
    checkpoints: Option<Checkpoints>,
    /// Records written since the last checkpoint.
    uncovered: u64,
    /// When the oldest of those was written.
    uncovered_since: Option<Instant>,
    /// The state before the batch being written, to go back to if it fails.
    saved: (u64, String, u64, Option<Instant>),
    /// The line this instance continues from, named in its first line.
    resumes: Option<(String, u64)>,
}

/// The end of an existing trail, where a new instance continues.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Tail {
    /// The hash of the last complete line.
    pub hash: Option<String>,
    /// That line's `instance` and `seq`, if it has them.
    pub resumes: Option<(String, u64)>,
    /// The file ends in a torn line.
    pub torn: bool,
}

impl Chain {
    /// A new instance, continuing from `tail` (the default: a new trail).
    pub(crate) fn new(tail: Tail, checkpoints: Option<Checkpoints>) -> Self {
        let instance = uuid::Builder::from_random_bytes(rand::random())
            .into_uuid()
            .simple()
            .to_string();
        let prev = tail.hash.unwrap_or_else(|| GENESIS.to_owned());
        Self {
            instance,
            seq: 0,
            saved: (0, prev.clone(), 0, None),
            prev,
            checkpoints,
            uncovered: 0,
            uncovered_since: None,
            resumes: tail.resumes,
        }
    }

    /// The instance id.
    pub(crate) fn instance(&self) -> &str {
        &self.instance
    }

    /// Marks the start of a batch (see [`Chain::rollback`]).
    pub(crate) fn begin(&mut self) {
        self.saved = (
            self.seq,
            self.prev.clone(),
            self.uncovered,
            self.uncovered_since,
        );
    }

    /// The batch was not written: its lines are not in the trail, so the
    /// next batch chains to the line before them and reuses their `seq`s.
    pub(crate) fn rollback(&mut self) {
        (self.seq, self.prev, self.uncovered, self.uncovered_since) = self.saved.clone();
    }

    /// Appends `record` (one JSON object, `{...}\n`) to `out` with the chain
    /// fields first.
    pub(crate) fn append(&mut self, record: &[u8], out: &mut Vec<u8>) {
        let body = record.strip_suffix(b"\n").unwrap_or(record);
        let rest = body.strip_prefix(b"{").unwrap_or(body);
        self.seq += 1;
        let start = out.len();
        let _ = write!(
            out,
            "{{\"instance\":\"{}\",\"seq\":{},\"prev\":\"{}\"",
            self.instance, self.seq, self.prev
        );
        if let (1, Some((instance, seq))) = (self.seq, &self.resumes) {
            let _ = write!(
                out,
                ",\"resumes\":{{\"instance\":{},\"seq\":{seq}}}",
                serde_json::Value::from(instance.as_str())
            );
        }
        if rest != b"}" {
            out.push(b',');
        }
        out.extend_from_slice(rest);
        self.prev = line_hash(&out[start..]);
        out.push(b'\n');
        self.uncovered += 1;
        self.uncovered_since.get_or_insert_with(Instant::now);
        // `checkpoint_records` is a hard bound, also inside a large batch.
        if self
            .checkpoints
            .as_ref()
            .is_some_and(|c| self.uncovered >= c.records)
        {
            self.checkpoint_if_due(Instant::now(), true, out);
        }
    }

    /// When the next checkpoint is due, if one will be.
    pub(crate) fn checkpoint_due_at(&self) -> Option<Instant> {
        let checkpoints = self.checkpoints.as_ref()?;
        let since = self.uncovered_since?;
        if self.uncovered >= checkpoints.records {
            return Some(since);
        }
        Some(since + checkpoints.interval)
    }

    /// Appends a signed checkpoint to `out` if one is due at `now`, or
    /// (`last`, on shutdown) if any record is not yet covered.
    pub(crate) fn checkpoint_if_due(&mut self, now: Instant, last: bool, out: &mut Vec<u8>) {
        let Some(due) = self.checkpoint_due_at() else {
            return;
        };
        if !(last || now >= due) {
            return;
        }
        let Some(checkpoints) = &self.checkpoints else {
            return;
        };
        self.seq += 1;
        let signature =
            checkpoints
                .signer
                .sign(&checkpoint_message(&self.instance, self.seq, &self.prev));
        let start = out.len();
        let _ = write!(
            out,
            "{{\"instance\":\"{}\",\"seq\":{},\"prev\":\"{}\",\"time\":\"{}\",\"stage\":\"checkpoint\",\"key_id\":\"{}\",\"signature\":\"{}\"}}",
            self.instance,
            self.seq,
            self.prev,
            humantime::format_rfc3339_millis(std::time::SystemTime::now()),
            key_id(&checkpoints.signer.spki),
            signature
        );
        self.prev = line_hash(&out[start..]);
        out.push(b'\n');
        self.uncovered = 0;
        self.uncovered_since = None;
    }
}

/// Where a new instance picks up the chain in an existing file: its last
/// complete line (none for an empty or missing file), and whether the file
/// ends in a torn line (a crash mid-write), which the writer then ends
/// with a newline before appending.
pub(crate) fn resume(path: &Path) -> std::io::Result<Tail> {
    let (last, torn) = last_line(path)?;
    let resumes = last.as_deref().and_then(|line| {
        let record: serde_json::Value = serde_json::from_slice(line).ok()?;
        Some((
            record["instance"].as_str()?.to_owned(),
            record["seq"].as_u64()?,
        ))
    });
    Ok(Tail {
        hash: last.as_deref().map(line_hash),
        resumes,
        torn,
    })
}

/// The last complete line of `path`, and whether a torn one follows it.
fn last_line(path: &Path) -> std::io::Result<(Option<Vec<u8>>, bool)> {
    // Only a regular file has an end to read (opening a FIFO to read would
    // wait for a writer, and there is nothing to continue in one).
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => {}
        Ok(_) => return Ok((None, false)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((None, false)),
        Err(e) => return Err(e),
    }
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((None, false)),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok((None, false));
    }
    // Read backwards in chunks until the line before the last newline is
    // whole.
    let mut tail: Vec<u8> = Vec::new();
    let mut pos = len;
    const CHUNK: u64 = 64 * 1024;
    loop {
        let take = CHUNK.min(pos);
        pos -= take;
        let mut chunk = vec![0u8; usize::try_from(take).unwrap_or(0)];
        file.seek(SeekFrom::Start(pos))?;
        file.read_exact(&mut chunk)?;
        chunk.extend_from_slice(&tail);
        tail = chunk;
        let torn = tail.last() != Some(&b'\n');
        // The complete lines end at the last newline.
        let Some(end) = tail.iter().rposition(|&b| b == b'\n') else {
            if pos == 0 {
                return Ok((None, torn)); // one torn line, nothing complete
            }
            continue;
        };
        let complete = &tail[..end];
        match complete.iter().rposition(|&b| b == b'\n') {
            Some(start) => return Ok((Some(complete[start + 1..].to_vec()), torn)),
            None if pos == 0 => return Ok((Some(complete.to_vec()), torn)),
            None => continue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn test_signer() -> Signer {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&aws_lc_rs::rand::SystemRandom::new()).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(pkcs8.as_ref());
        Signer::from_pem(
            format!("-----BEGIN PRIVATE KEY-----\n{b64}\n-----END PRIVATE KEY-----\n").as_bytes(),
        )
        .unwrap()
    }

    #[test]
    fn each_line_names_the_hash_of_the_one_before() {
        let mut chain = Chain::new(Tail::default(), None);
        let mut out = Vec::new();
        chain.append(b"{\"stage\":\"request\"}\n", &mut out);
        chain.append(b"{}\n", &mut out);
        let lines: Vec<&[u8]> = out.split_inclusive(|&b| b == b'\n').collect();
        let first: serde_json::Value = serde_json::from_slice(lines[0]).unwrap();
        let second: serde_json::Value = serde_json::from_slice(lines[1]).unwrap();
        assert_eq!(first["seq"], 1);
        assert_eq!(first["prev"], GENESIS);
        assert_eq!(first["stage"], "request");
        assert_eq!(second["seq"], 2);
        assert_eq!(second["prev"], line_hash(lines[0]));
        assert_eq!(first["instance"], second["instance"]);
        assert_eq!(first["instance"].as_str().unwrap().len(), 32);
    }

    #[test]
    fn a_failed_batch_is_rolled_back() {
        let mut chain = Chain::new(
            Tail {
                hash: Some("ab".repeat(32)),
                resumes: Some(("cd".repeat(16), 7)),
                torn: false,
            },
            None,
        );
        let mut out = Vec::new();
        chain.begin();
        chain.append(b"{}\n", &mut out);
        chain.rollback();
        let mut again = Vec::new();
        chain.append(b"{}\n", &mut again);
        assert_eq!(out, again, "the same seq and prev again");
        let first: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(first["prev"], "ab".repeat(32));
        assert_eq!(
            first["resumes"],
            serde_json::json!({"instance": "cd".repeat(16), "seq": 7})
        );
    }

    #[test]
    fn a_checkpoint_signs_the_instance_its_seq_and_prev() {
        let signer = test_signer();
        let spki = signer.spki.clone();
        let mut chain = Chain::new(
            Tail::default(),
            Some(Checkpoints {
                signer,
                interval: Duration::from_secs(3600),
                records: 2,
            }),
        );
        let mut out = Vec::new();
        chain.append(b"{}\n", &mut out);
        chain.checkpoint_if_due(Instant::now(), false, &mut out);
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1, "not due");
        chain.append(b"{}\n", &mut out);
        let lines: Vec<&[u8]> = out.split_inclusive(|&b| b == b'\n').collect();
        assert_eq!(lines.len(), 3, "written right after the second record");
        let checkpoint: serde_json::Value = serde_json::from_slice(lines[2]).unwrap();
        assert_eq!(checkpoint["stage"], "checkpoint");
        assert_eq!(checkpoint["seq"], 3);
        assert_eq!(checkpoint["prev"], line_hash(lines[1]));
        assert_eq!(checkpoint["key_id"], key_id(&spki));
        let signature = base64::engine::general_purpose::STANDARD
            .decode(checkpoint["signature"].as_str().unwrap())
            .unwrap();
        let message = checkpoint_message(
            checkpoint["instance"].as_str().unwrap(),
            3,
            checkpoint["prev"].as_str().unwrap(),
        );
        aws_lc_rs::signature::UnparsedPublicKey::new(&aws_lc_rs::signature::ED25519, &spki)
            .verify(&message, &signature)
            .expect("verifies with the SPKI public key");
        // Nothing uncovered: no checkpoint, even on shutdown.
        let before = out.len();
        chain.checkpoint_if_due(Instant::now(), true, &mut out);
        assert_eq!(out.len(), before);
    }

    #[test]
    fn the_signing_key_never_shows() {
        let signer = test_signer();
        let shown = format!("{signer:?} {}", signer.public_key_pem());
        assert!(!shown.contains("PRIVATE"), "{shown}");
        assert!(Signer::from_pem(
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
        )
        .unwrap_err()
        .contains("Ed25519"));
    }

    #[test]
    fn resume_finds_the_last_complete_line_and_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let tail = |hash: Option<String>, torn| Tail {
            hash,
            resumes: None,
            torn,
        };
        assert_eq!(resume(&path).unwrap(), Tail::default());
        let long = format!("{{\"pad\":\"{}\"}}", "x".repeat(200_000));
        std::fs::write(&path, format!("{{\"a\":1}}\n{long}\n")).unwrap();
        assert_eq!(
            resume(&path).unwrap(),
            tail(Some(line_hash(long.as_bytes())), false)
        );
        std::fs::write(&path, format!("{{\"a\":1}}\n{long}\n{{\"torn")).unwrap();
        assert_eq!(
            resume(&path).unwrap(),
            tail(Some(line_hash(long.as_bytes())), true)
        );
        let last = format!("{{\"instance\":\"{}\",\"seq\":9}}", "e".repeat(32));
        std::fs::write(&path, format!("{{\"a\":1}}\n{last}\n")).unwrap();
        assert_eq!(
            resume(&path).unwrap(),
            Tail {
                hash: Some(line_hash(last.as_bytes())),
                resumes: Some(("e".repeat(32), 9)),
                torn: false
            }
        );
        std::fs::write(&path, "{\"torn").unwrap();
        assert_eq!(resume(&path).unwrap(), tail(None, true));
    }
}
