//! Signing material for `bench/run.sh`: a JWKS and RS256/ES256 tokens.
//!
//! The benchmark compares the gateway with HAProxy's `jwt_verify`, so both
//! must check real signatures made with keys generated for the run
//! (`openssl genpkey`). This reads those private keys and writes, into
//! `--out`:
//!
//! - `jwks.json`: the two public keys, `kid` `bench-rsa` and `bench-ec`;
//! - `rs256.txt` and `es256.txt`: `--count` valid tokens each, one a line,
//!   all different (each has its own `sub` and `jti`), for team `platform`,
//!   with `--issuer`, `--audience` and `exp` `--ttl` seconds from now.
//!
//! ```sh
//! cargo run --release --example bench_tokens -- --rsa-key rsa.pem \
//!     --ec-key ec.pem --issuer https://idp.bench.invalid \
//!     --audience polytomic-gateway --count 10000 --out /tmp/bench
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use clap::Parser;
use jsonwebtoken::{jwk::Jwk, Algorithm, EncodingKey, Header};

#[derive(Parser)]
struct Args {
    /// RSA private key (PEM), for RS256.
    #[arg(long)]
    rsa_key: PathBuf,
    /// EC P-256 private key (PEM), for ES256.
    #[arg(long)]
    ec_key: PathBuf,
    #[arg(long)]
    issuer: String,
    #[arg(long)]
    audience: String,
    /// Tokens of each algorithm.
    #[arg(long, default_value_t = 1)]
    count: usize,
    /// Lifetime of the tokens, in seconds.
    #[arg(long, default_value_t = 7200)]
    ttl: u64,
    #[arg(long)]
    out: PathBuf,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let read = |path: &Path| std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()));
    let rsa = EncodingKey::from_rsa_pem(&read(&args.rsa_key)?)?;
    let ec = EncodingKey::from_ec_pem(&read(&args.ec_key)?)?;

    let mut keys = Vec::new();
    for (key, alg, kid) in [
        (&rsa, Algorithm::RS256, "bench-rsa"),
        (&ec, Algorithm::ES256, "bench-ec"),
    ] {
        let mut jwk = Jwk::from_encoding_key(key, alg)?;
        jwk.common.key_id = Some(kid.to_owned());
        keys.push(jwk);
    }
    std::fs::write(
        args.out.join("jwks.json"),
        serde_json::to_vec(&serde_json::json!({ "keys": keys }))?,
    )?;

    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    for (key, alg, kid, file) in [
        (&rsa, Algorithm::RS256, "bench-rsa", "rs256.txt"),
        (&ec, Algorithm::ES256, "bench-ec", "es256.txt"),
    ] {
        let mut header = Header::new(alg);
        header.kid = Some(kid.to_owned());
        let mut out = std::io::BufWriter::new(std::fs::File::create(args.out.join(file))?);
        for i in 0..args.count {
            let claims = serde_json::json!({
                "iss": args.issuer, "aud": args.audience,
                "sub": format!("bench-user-{i}@example.com"), "teams": ["platform"],
                "jti": format!("{file}-{i}"), "iat": now, "exp": now + args.ttl,
            });
            writeln!(out, "{}", jsonwebtoken::encode(&header, &claims, key)?)?;
        }
        out.flush()?;
    }
    Ok(())
}
