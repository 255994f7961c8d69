//! Reading a request body under a size limit, with transparent gzip/deflate decoding.
//!
//! The limit applies twice: to the bytes on the wire while they stream in, and to the decoded
//! bytes while they are inflated. Decoding stops one byte past the limit, so a decompression
//! bomb costs at most `limit` bytes of memory before it is refused with 413.

use std::io::Read;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use flate2::read::{DeflateDecoder, MultiGzDecoder, ZlibDecoder};
use http::HeaderMap;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::buffer::Reservation;
use super::error::IngestError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    Gzip,
    Deflate,
}

impl Encoding {
    /// From `Content-Encoding`; `identity` entries are ignored, anything unknown is refused.
    pub fn from_headers(headers: &HeaderMap) -> Result<Self, IngestError> {
        let mut found = Encoding::Identity;
        for value in headers.get_all(http::header::CONTENT_ENCODING) {
            let text = value
                .to_str()
                .map_err(|_| IngestError::UnsupportedEncoding("(not ASCII)".into()))?;
            for token in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                let enc = match token.to_ascii_lowercase().as_str() {
                    "identity" => continue,
                    "gzip" | "x-gzip" => Encoding::Gzip,
                    "deflate" => Encoding::Deflate,
                    _ => return Err(IngestError::UnsupportedEncoding(token.to_owned())),
                };
                if found != Encoding::Identity {
                    return Err(IngestError::UnsupportedEncoding(text.to_owned()));
                }
                found = enc;
            }
        }
        Ok(found)
    }
}

/// Reads the whole body (at most `limit` bytes on the wire) within `timeout`, then decodes it
/// (at most `limit` bytes decoded). Every byte held is first reserved in `reservation`, so the
/// ingest memory budget covers the raw and the decoded body alike.
pub async fn read(
    body: Incoming,
    encoding: Encoding,
    limit: u64,
    timeout: Duration,
    reservation: &mut Reservation<'_>,
) -> Result<Bytes, IngestError> {
    let raw = tokio::time::timeout(timeout, collect_limited(body, limit, reservation))
        .await
        .map_err(|_| IngestError::BodyIncomplete("timed out reading the request body".into()))??;
    decode_reserved(raw, encoding, limit, reservation).await
}

async fn collect_limited(
    mut body: Incoming,
    limit: u64,
    reservation: &mut Reservation<'_>,
) -> Result<Bytes, IngestError> {
    // Sized once from the declared length (when there is one), so growing it never holds
    // twice the bytes the budget counts.
    let declared = hyper::body::Body::size_hint(&body).exact().unwrap_or(0);
    let mut buf = BytesMut::with_capacity(declared.min(limit) as usize);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| IngestError::BodyIncomplete(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            let len = buf.len() as u64 + data.len() as u64;
            if len > limit {
                return Err(IngestError::TooLarge { limit });
            }
            reservation.grow_to(len).await?;
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

/// Decoded output is produced (and reserved) this much at a time.
const DECODE_CHUNK: u64 = 64 * 1024;

/// [`decode`], reserving the decoded bytes as they are produced and giving back the raw
/// body's share once it is decoded.
async fn decode_reserved(
    raw: Bytes,
    encoding: Encoding,
    limit: u64,
    reservation: &mut Reservation<'_>,
) -> Result<Bytes, IngestError> {
    let raw_len = raw.len() as u64;
    let Some(mut reader) = decoder(&raw, encoding) else {
        return Ok(raw);
    };
    let mut out = Vec::new();
    loop {
        let held = raw_len + out.len() as u64;
        reservation
            .grow_to((held + DECODE_CHUNK).min(raw_len + limit))
            .await?;
        let room = DECODE_CHUNK.min(limit + 1 - out.len() as u64);
        let n = (&mut reader)
            .take(room)
            .read_to_end(&mut out)
            .map_err(|e| IngestError::CorruptBody(e.to_string()))?;
        if out.len() as u64 > limit {
            return Err(IngestError::TooLarge { limit });
        }
        if n == 0 {
            break;
        }
    }
    drop(reader);
    drop(raw);
    out.shrink_to_fit();
    reservation.shrink_to(out.len() as u64);
    Ok(Bytes::from(out))
}

/// A decoder of `raw`, or `None` when it is sent as is.
fn decoder(raw: &[u8], encoding: Encoding) -> Option<Box<dyn Read + Send + '_>> {
    if raw.is_empty() {
        return None;
    }
    match encoding {
        Encoding::Identity => None,
        Encoding::Gzip => Some(Box::new(MultiGzDecoder::new(raw))),
        // RFC 9110 `deflate` is zlib-wrapped, but some clients send a raw deflate stream:
        // a zlib header is two bytes whose big-endian value is a multiple of 31 with method 8.
        Encoding::Deflate if is_zlib_header(raw) => Some(Box::new(ZlibDecoder::new(raw))),
        Encoding::Deflate => Some(Box::new(DeflateDecoder::new(raw))),
    }
}

/// Decodes `raw`, refusing output beyond `limit` bytes without producing it.
pub fn decode(raw: Bytes, encoding: Encoding, limit: u64) -> Result<Bytes, IngestError> {
    let Some(reader) = decoder(&raw, encoding) else {
        return Ok(raw);
    };
    let mut out = Vec::with_capacity((raw.len() * 4).min(limit as usize));
    reader
        .take(limit + 1)
        .read_to_end(&mut out)
        .map_err(|e| IngestError::CorruptBody(e.to_string()))?;
    if out.len() as u64 > limit {
        return Err(IngestError::TooLarge { limit });
    }
    Ok(Bytes::from(out))
}

fn is_zlib_header(raw: &[u8]) -> bool {
    raw.len() >= 2 && raw[0] & 0x0f == 8 && (u16::from(raw[0]) << 8 | u16::from(raw[1])) % 31 == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::Compression;
    use flate2::write::{DeflateEncoder, GzEncoder, ZlibEncoder};
    use std::io::Write;

    fn gz(data: &[u8]) -> Bytes {
        let mut e = GzEncoder::new(Vec::new(), Compression::best());
        e.write_all(data).unwrap();
        e.finish().unwrap().into()
    }

    #[test]
    fn decodes_gzip_zlib_and_raw_deflate() {
        let data = br#"{"events":[]}"#;
        assert_eq!(&decode(gz(data), Encoding::Gzip, 100).unwrap()[..], data);
        let mut z = ZlibEncoder::new(Vec::new(), Compression::fast());
        z.write_all(data).unwrap();
        let z: Bytes = z.finish().unwrap().into();
        assert_eq!(&decode(z, Encoding::Deflate, 100).unwrap()[..], data);
        let mut d = DeflateEncoder::new(Vec::new(), Compression::fast());
        d.write_all(data).unwrap();
        let d: Bytes = d.finish().unwrap().into();
        assert_eq!(&decode(d, Encoding::Deflate, 100).unwrap()[..], data);
    }

    #[test]
    fn a_bomb_stops_at_the_limit() {
        let bomb = gz(&vec![b' '; 50 * 1024 * 1024]);
        assert!(bomb.len() < 100 * 1024);
        match decode(bomb, Encoding::Gzip, 1024 * 1024) {
            Err(IngestError::TooLarge { limit }) => assert_eq!(limit, 1024 * 1024),
            other => panic!("expected TooLarge, got {other:?}"),
        }
    }

    #[test]
    fn corrupt_streams_are_reported() {
        let mut truncated = gz(b"hello world, hello world").to_vec();
        truncated.truncate(truncated.len() - 6);
        assert!(matches!(
            decode(truncated.into(), Encoding::Gzip, 100),
            Err(IngestError::CorruptBody(_))
        ));
        assert!(matches!(
            decode(Bytes::from_static(b"not gzip at all"), Encoding::Gzip, 100),
            Err(IngestError::CorruptBody(_))
        ));
    }

    #[test]
    fn content_encoding_header_forms() {
        let enc = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(http::header::CONTENT_ENCODING, v.parse().unwrap());
            Encoding::from_headers(&h)
        };
        assert_eq!(enc("GZIP").unwrap(), Encoding::Gzip);
        assert_eq!(enc("identity").unwrap(), Encoding::Identity);
        assert_eq!(enc("deflate, identity").unwrap(), Encoding::Deflate);
        assert!(matches!(
            enc("br"),
            Err(IngestError::UnsupportedEncoding(_))
        ));
        assert!(matches!(
            enc("gzip, gzip"),
            Err(IngestError::UnsupportedEncoding(_))
        ));
        assert_eq!(
            Encoding::from_headers(&HeaderMap::new()).unwrap(),
            Encoding::Identity
        );
    }
}
