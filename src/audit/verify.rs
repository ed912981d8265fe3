//! `polytomic-gateway audit verify`: checks a trail's hash chain and the
//! signature of every checkpoint (see [`super::chain`]).
//!
//! The files are read in the order given (oldest rotated file first), as
//! one sequence of lines. Each line must name the hash of the line before
//! it, and within an instance `seq` must go up by one. The first break is
//! reported with its file, line and kind; lines after the last checkpoint
//! of an instance are "not yet covered by a checkpoint", which is not a
//! failure, and a line torn by a crash is reported as such, not as
//! tampering.

use std::collections::{HashMap, HashSet};
use std::fmt;

use aws_lc_rs::signature::{UnparsedPublicKey, ED25519};
use base64::Engine as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::SubjectPublicKeyInfoDer;
use serde_json::Value;

use super::chain::{checkpoint_message, key_id, line_hash, GENESIS};

/// An Ed25519 public key, from PEM.
pub struct PublicKey {
    spki: Vec<u8>,
}

impl PublicKey {
    /// Reads a PEM SubjectPublicKeyInfo (`-----BEGIN PUBLIC KEY-----`).
    pub fn from_pem(pem: &[u8]) -> Result<Self, String> {
        let der = SubjectPublicKeyInfoDer::from_pem_slice(pem)
            .map_err(|_| "is not a PEM public key (-----BEGIN PUBLIC KEY-----)".to_owned())?;
        // An Ed25519 SPKI: the algorithm id 1.3.101.112 and 32 key bytes.
        const ED25519_SPKI_PREFIX: [u8; 12] = [
            0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
        ];
        let spki = der.as_ref().to_vec();
        if spki.len() != 44 || spki[..12] != ED25519_SPKI_PREFIX {
            return Err("is not an Ed25519 public key".to_owned());
        }
        Ok(Self { spki })
    }

    fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, &self.spki[12..])
            .verify(message, signature)
            .is_ok()
    }
}

/// How the chain broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakKind {
    /// A line's bytes are not those the next line's `prev` names.
    Changed,
    /// Lines are missing.
    Deleted,
    /// A line that the chain does not account for.
    Inserted,
    /// Lines are out of order.
    Reordered,
    /// A checkpoint's signature does not verify with the public key.
    BadSignature,
    /// An instance's last lines are missing: a later line chains to a line
    /// after the last one left.
    CutTail,
}

impl fmt::Display for BreakKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Changed => "changed",
            Self::Deleted => "deleted",
            Self::Inserted => "inserted",
            Self::Reordered => "reordered",
            Self::BadSignature => "bad signature",
            Self::CutTail => "cut tail",
        })
    }
}

/// The first break found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Break {
    /// The file.
    pub file: String,
    /// The line, from 1.
    pub line: usize,
    /// What kind of break.
    pub kind: BreakKind,
    /// What exactly.
    pub detail: String,
}

impl fmt::Display for Break {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: {}: {}",
            self.file, self.line, self.kind, self.detail
        )
    }
}

/// One instance's lines.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstanceReport {
    /// The instance id.
    pub instance: String,
    /// Its records (checkpoints not counted).
    pub records: u64,
    /// How many of them a verified checkpoint covers.
    pub covered: u64,
}

/// A trail that holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Each instance, in order.
    pub instances: Vec<InstanceReport>,
    /// Checkpoints verified.
    pub checkpoints: u64,
    /// Lines torn by a crash: (file, line).
    pub torn: Vec<(String, usize)>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for i in &self.instances {
            write!(
                f,
                "instance {}: {} records, {} covered by a checkpoint",
                i.instance, i.records, i.covered
            )?;
            if i.records > i.covered {
                write!(
                    f,
                    ", {} not yet covered by a checkpoint",
                    i.records - i.covered
                )?;
            }
            writeln!(f)?;
        }
        for (file, line) in &self.torn {
            writeln!(
                f,
                "{file}:{line}: torn: a line half-written by a crash (not tampering)"
            )?;
        }
        write!(
            f,
            "ok: the chain holds and {} checkpoint signatures verify",
            self.checkpoints
        )
    }
}

/// One line of the trail, where it is.
struct Line<'a> {
    file: &'a str,
    number: usize,
    bytes: &'a [u8],
}

/// What the chain fields of a line say.
struct Link {
    instance: String,
    seq: u64,
    prev: String,
    record: Value,
}

fn link(bytes: &[u8]) -> Option<Link> {
    let record: Value = serde_json::from_slice(bytes).ok()?;
    Some(Link {
        instance: record.get("instance")?.as_str()?.to_owned(),
        seq: record.get("seq")?.as_u64()?,
        prev: record.get("prev")?.as_str()?.to_owned(),
        record,
    })
}

/// Checks the trail in `files` (name and content, oldest first).
pub fn verify(files: &[(String, Vec<u8>)], key: &PublicKey) -> Result<Report, Break> {
    let lines: Vec<Line<'_>> = files
        .iter()
        .flat_map(|(file, text)| {
            text.split_inclusive(|&b| b == b'\n')
                .enumerate()
                .map(move |(i, bytes)| Line {
                    file,
                    number: i + 1,
                    bytes,
                })
        })
        .collect();
    let links: Vec<Option<Link>> = lines.iter().map(|l| link(l.bytes)).collect();
    let at = |i: usize, kind, detail: String| Break {
        file: lines[i].file.to_owned(),
        line: lines[i].number,
        kind,
        detail,
    };

    let mut report = Report::default();
    // The last line that holds: its index, hash, instance and seq.
    let mut last: Option<(usize, String)> = None;
    let mut current: Option<(String, u64)> = None;
    let mut finished: HashSet<String> = HashSet::new();
    // Each instance's highest seq seen, for `resumes`.
    let mut highest: HashMap<String, u64> = HashMap::new();
    // A line that is not a record, waiting to be judged torn or inserted.
    let mut unlinked: Option<usize> = None;

    for (i, line) in lines.iter().enumerate() {
        let Some(link) = &links[i] else {
            if let Some(earlier) = unlinked {
                return Err(at(
                    earlier,
                    BreakKind::Inserted,
                    "a line that is not a chained audit record".into(),
                ));
            }
            unlinked = Some(i);
            continue;
        };
        let hash_of_last = last.as_ref().map_or(GENESIS, |(_, h)| h.as_str());
        let same_instance = current
            .as_ref()
            .is_some_and(|(instance, _)| *instance == link.instance);
        if let Some(u) = unlinked.take() {
            // Only a crash leaves a line that is not a record: the new
            // instance that follows chains past it, to the line before.
            let restarted = !same_instance && link.seq == 1 && link.prev == hash_of_last;
            if !restarted {
                return Err(at(
                    u,
                    BreakKind::Inserted,
                    "a line that is not a chained audit record".into(),
                ));
            }
            report
                .torn
                .push((lines[u].file.to_owned(), lines[u].number));
        }
        if same_instance {
            let (instance, seq) = current
                .as_ref()
                .map(|(i, s)| (i.clone(), *s))
                .unwrap_or_default();
            let expected = seq + 1;
            if link.seq == expected {
                if link.prev != hash_of_last {
                    let (before, _) = last.clone().unwrap_or((i, String::new()));
                    return Err(at(
                        before,
                        BreakKind::Changed,
                        format!(
                            "its hash is not the prev of {}:{} (seq {} of instance {instance})",
                            line.file, line.number, link.seq
                        ),
                    ));
                }
            } else if link.seq > expected {
                let found_later = links[i + 1..]
                    .iter()
                    .flatten()
                    .any(|later| later.instance == instance && later.seq == expected);
                if found_later {
                    return Err(at(
                        i,
                        BreakKind::Reordered,
                        format!(
                            "seq {} of instance {instance} comes before seq {expected}",
                            link.seq
                        ),
                    ));
                }
                let first_of_file = last
                    .as_ref()
                    .is_some_and(|(l, _)| lines[*l].file != line.file);
                let kind = if first_of_file {
                    BreakKind::CutTail
                } else {
                    BreakKind::Deleted
                };
                return Err(at(
                    i,
                    kind,
                    format!(
                        "seq {expected} to {} of instance {instance} are missing before this line",
                        link.seq - 1
                    ),
                ));
            } else {
                let kind = if link.seq == seq {
                    BreakKind::Inserted
                } else {
                    BreakKind::Reordered
                };
                return Err(at(
                    i,
                    kind,
                    format!(
                        "seq {} of instance {instance} again, after seq {seq}",
                        link.seq
                    ),
                ));
            }
        } else {
            // A new instance (the first line, a restart, or the next file).
            if finished.contains(&link.instance) {
                return Err(at(
                    i,
                    BreakKind::Reordered,
                    format!("a line of instance {}, which ended earlier", link.instance),
                ));
            }
            if last.is_some() {
                if link.prev != hash_of_last {
                    // `resumes` names the line it chained to: if that is
                    // beyond the last line left, the tail was cut.
                    let resumes = &link.record["resumes"];
                    let cut = match (resumes["instance"].as_str(), resumes["seq"].as_u64()) {
                        (Some(instance), Some(seq)) => {
                            highest.get(instance).is_some_and(|&h| seq > h)
                        }
                        _ => false,
                    };
                    let (before, _) = last.clone().unwrap_or((i, String::new()));
                    return Err(if cut {
                        at(
                            before,
                            BreakKind::CutTail,
                            format!(
                                "the lines after this one are missing: {}:{} continues from seq {} of instance {}",
                                line.file,
                                line.number,
                                resumes["seq"],
                                resumes["instance"].as_str().unwrap_or_default()
                            ),
                        )
                    } else {
                        at(
                            before,
                            BreakKind::Changed,
                            format!(
                                "its hash is not the prev of {}:{}, the first line of instance {}",
                                line.file, line.number, link.instance
                            ),
                        )
                    });
                }
                if link.seq != 1 {
                    return Err(at(
                        i,
                        BreakKind::Deleted,
                        format!(
                            "seq 1 to {} of instance {} are missing",
                            link.seq - 1,
                            link.instance
                        ),
                    ));
                }
            }
            if let Some((instance, _)) = current.take() {
                finished.insert(instance);
            }
            report.instances.push(InstanceReport {
                instance: link.instance.clone(),
                ..InstanceReport::default()
            });
        }
        let report_instance = report
            .instances
            .last_mut()
            .expect("an instance was just started or continued");
        if link.record["stage"] == "checkpoint" {
            let signature = link.record["signature"]
                .as_str()
                .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
                .unwrap_or_default();
            let message = checkpoint_message(&link.instance, link.seq, &link.prev);
            if !key.verifies(&message, &signature) {
                let signed_by = link.record["key_id"].as_str().unwrap_or("?");
                let expected = key_id(&key.spki);
                let detail = if signed_by == expected {
                    "the signature does not verify".to_owned()
                } else {
                    format!("signed by key {signed_by}, not by the given key {expected}")
                };
                return Err(at(i, BreakKind::BadSignature, detail));
            }
            report.checkpoints += 1;
            report_instance.covered = report_instance.records;
        } else {
            report_instance.records += 1;
        }
        highest.insert(link.instance.clone(), link.seq);
        current = Some((link.instance.clone(), link.seq));
        last = Some((i, line_hash(line.bytes)));
    }
    if let Some(u) = unlinked {
        // The last line: torn by a crash if it is the end of a record that
        // never got its newline, else something appended.
        let torn = !lines[u].bytes.ends_with(b"\n")
            || serde_json::from_slice::<Value>(lines[u].bytes).is_err();
        if !torn {
            return Err(at(
                u,
                BreakKind::Inserted,
                "a line that is not a chained audit record".into(),
            ));
        }
        report
            .torn
            .push((lines[u].file.to_owned(), lines[u].number));
    }
    Ok(report)
}
