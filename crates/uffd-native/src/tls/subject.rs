//! The subject common name of a DER certificate: what GnuTLS (and so CRIU) still accepts as the
//! certificate's name when no subjectAltName matches, and what webpki never looks at.
//!
//! Only the path to the name is walked (Certificate → tbsCertificate → subject → CN); anything that
//! does not parse gives `None`, so a malformed certificate can only fail the name check.

/// `id-at-commonName` (2.5.4.3), as DER content bytes.
const OID_CN: &[u8] = &[0x55, 0x04, 0x03];

/// One DER element: its tag, its content and what follows it.
fn element(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
  let (&tag, rest) = b.split_first()?;
  let (&first, rest) = rest.split_first()?;
  let (len, rest) = if first < 0x80 {
    (first as usize, rest)
  } else {
    // Long form: the low bits say how many length bytes follow (a certificate needs at most 4).
    let n = (first & 0x7f) as usize;
    if n == 0 || n > 4 || rest.len() < n {
      return None;
    }
    let len = rest[..n].iter().fold(0usize, |a, &x| (a << 8) | x as usize);
    (len, &rest[n..])
  };
  (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// The content of the SEQUENCE at the front of `b`.
fn sequence(b: &[u8]) -> Option<&[u8]> {
  match element(b)? {
    (0x30, content, _) => Some(content),
    _ => None,
  }
}

/// The subject CN of `der` (the last one if there are several, as GnuTLS reads it), if it is text.
pub fn subject_cn(der: &[u8]) -> Option<String> {
  let tbs = sequence(sequence(der)?)?;
  let mut rest = tbs;
  // [0] version (optional), serialNumber, signature, issuer, validity, then subject.
  if rest.first() == Some(&0xa0) {
    rest = element(rest)?.2;
  }
  for _ in 0..4 {
    rest = element(rest)?.2;
  }
  let mut rdns = sequence(rest)?;
  let mut cn = None;
  while !rdns.is_empty() {
    let (tag, set, next) = element(rdns)?;
    rdns = next;
    if tag != 0x31 {
      return None;
    }
    let mut atvs = set;
    while !atvs.is_empty() {
      let (_, atv, next) = element(atvs)?;
      atvs = next;
      let (oid_tag, oid, value) = element(atv)?;
      if oid_tag == 0x06 && oid == OID_CN {
        let (vtag, text, _) = element(value)?;
        // UTF8String, PrintableString, IA5String, T61String (as bytes; a CN of an address is ASCII).
        if matches!(vtag, 0x0c | 0x13 | 0x16 | 0x14) {
          cn = std::str::from_utf8(text).ok().map(str::to_owned);
        }
      }
    }
  }
  cn
}

#[cfg(test)]
mod tests {
  use super::*;

  /// A DER TLV.
  fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    if content.len() < 0x80 {
      v.push(content.len() as u8);
    } else {
      v.extend([0x82, (content.len() >> 8) as u8, content.len() as u8]);
    }
    v.extend_from_slice(content);
    v
  }

  fn name(cn: &[u8], tag: u8) -> Vec<u8> {
    let o = tlv(0x06, &[0x55, 0x04, 0x0a]); // O
    let org = tlv(0x31, &tlv(0x30, &[o, tlv(0x0c, b"lazy")].concat()));
    let c = tlv(0x31, &tlv(0x30, &[tlv(0x06, OID_CN), tlv(tag, cn)].concat()));
    tlv(0x30, &[org, c].concat())
  }

  fn cert(subject: Vec<u8>, with_version: bool) -> Vec<u8> {
    let mut tbs = Vec::new();
    if with_version {
      tbs.extend(tlv(0xa0, &tlv(0x02, &[2])));
    }
    tbs.extend(tlv(0x02, &[0x01; 200])); // a long serial: the long length form
    tbs.extend(tlv(0x30, &tlv(0x06, &[0x2a, 0x86, 0x48])));
    tbs.extend(name(b"issuer-ca", 0x13));
    tbs.extend(tlv(0x30, &[tlv(0x17, b"260101000000Z"), tlv(0x17, b"270101000000Z")].concat()));
    tbs.extend(subject);
    tbs.extend(tlv(0x30, &[]));
    tlv(0x30, &[tlv(0x30, &tbs), tlv(0x30, &[]), tlv(0x03, &[0])].concat())
  }

  #[test]
  fn finds_the_subject_cn_not_the_issuers() {
    assert_eq!(subject_cn(&cert(name(b"127.0.0.1", 0x0c), true)).as_deref(), Some("127.0.0.1"));
    assert_eq!(subject_cn(&cert(name(b"host.example", 0x13), false)).as_deref(), Some("host.example"));
  }

  #[test]
  fn garbage_and_truncation_give_none() {
    assert_eq!(subject_cn(b""), None);
    assert_eq!(subject_cn(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
    let c = cert(name(b"127.0.0.1", 0x0c), true);
    for cut in [1, 10, c.len() / 2, c.len() - 30] {
      assert_eq!(subject_cn(&c[..cut]), None, "cut at {cut}");
    }
    // A CN that is not a string type is no name.
    assert_eq!(subject_cn(&cert(name(b"\x01\x02", 0x04), true)), None);
  }
}
