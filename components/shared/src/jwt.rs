//! HS256 JSON Web Tokens (RFC 7519), enough for the shop: `sub` (the user id), `iat`, `exp`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub iat: i64,
    pub exp: i64,
}

const HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

fn signature(secret: &str, signed_part: &str) -> Vec<u8> {
    // HMAC takes a key of any length.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC accepts any key length");
    mac.update(signed_part.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

pub fn sign(claims: &Claims, secret: &str) -> String {
    let header = URL_SAFE_NO_PAD.encode(HEADER);
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap_or_default());
    let signed_part = format!("{header}.{payload}");
    let signature = URL_SAFE_NO_PAD.encode(signature(secret, &signed_part));
    format!("{signed_part}.{signature}")
}

/// The claims of a token signed with `secret` that has not expired at `now`.
pub fn verify(token: &str, secret: &str, now: i64) -> Result<Claims, String> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("the token is not a JWT (header.payload.signature)".into());
    };
    let signed_part = format!("{header}.{payload}");
    let header: serde_json::Value = URL_SAFE_NO_PAD
        .decode(header)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .ok_or("the token's header is not base64url JSON")?;
    if header.get("alg").and_then(|alg| alg.as_str()) != Some("HS256") {
        return Err("the token is not signed with HS256".into());
    }
    let given = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| "the token's signature is not base64url")?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).map_err(|err| err.to_string())?;
    mac.update(signed_part.as_bytes());
    // Constant-time comparison.
    mac.verify_slice(&given)
        .map_err(|_| "the token's signature does not match")?;
    let claims: Claims = URL_SAFE_NO_PAD
        .decode(payload)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .ok_or("the token's claims are not valid")?;
    if claims.exp <= now {
        return Err("the token has expired".into());
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejections() {
        let claims = Claims {
            sub: "7".into(),
            iat: 100,
            exp: 200,
        };
        let token = sign(&claims, "secret");
        assert_eq!(verify(&token, "secret", 150), Ok(claims));
        assert!(verify(&token, "other", 150).unwrap_err().contains("signature"));
        assert!(verify(&token, "secret", 200).unwrap_err().contains("expired"));
        assert!(verify("a.b", "secret", 150).is_err());
        let mut tampered: Vec<&str> = token.split('.').collect();
        let forged = URL_SAFE_NO_PAD.encode(r#"{"sub":"1","iat":100,"exp":999}"#);
        tampered[1] = &forged;
        assert!(verify(&tampered.join("."), "secret", 150).is_err());
    }
}
