//! The subject common name of a DER certificate, when GnuTLS (and so CRIU) would take it as the
//! certificate's name: webpki never looks at it.
//!
//! GnuTLS falls back to the CN only when the certificate names no host in a subjectAltName (no
//! dNSName, no iPAddress) and has exactly one CN; so does this. Only the path to the names is walked
//! (Certificate → tbsCertificate → subject, then its extensions); anything that does not parse gives
//! `None`, so a malformed certificate can only fail the name check.

/// `id-at-commonName` (2.5.4.3), as DER content bytes.
const OID_CN: &[u8] = &[0x55, 0x04, 0x03];
/// `id-ce-subjectAltName` (2.5.29.17).
const OID_SAN: &[u8] = &[0x55, 0x1d, 0x11];
/// GeneralName tags of a host: dNSName [2] and iPAddress [7] (context-specific, primitive).
const SAN_DNS: u8 = 0x82;
const SAN_IP: u8 = 0x87;

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

/// The subject CN of `der` as GnuTLS would match it: only if the subject has exactly one CN (a text
/// one) and no subjectAltName names a host.
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
  let (tag, mut rdns, after_subject) = element(rest)?;
  if tag != 0x30 {
    return None;
  }
  let mut cns = Vec::new();
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
        let text = matches!(vtag, 0x0c | 0x13 | 0x16 | 0x14).then(|| std::str::from_utf8(text).ok()).flatten();
        cns.push(text.map(str::to_owned));
      }
    }
  }
  // subjectPublicKeyInfo, then [1] issuerUniqueID, [2] subjectUniqueID, [3] extensions (all optional).
  let mut rest = element(after_subject)?.2;
  while !rest.is_empty() {
    let (tag, content, next) = element(rest)?;
    if tag == 0xa3 && names_a_host(content)? {
      return None;
    }
    rest = next;
  }
  match cns.as_slice() {
    [Some(cn)] => Some(cn.clone()),
    _ => None,
  }
}

/// Does the extensions field (`[3]`'s content) have a subjectAltName with a dNSName or iPAddress?
/// None if it does not parse.
fn names_a_host(explicit: &[u8]) -> Option<bool> {
  let mut exts = sequence(explicit)?;
  while !exts.is_empty() {
    let (tag, ext, next) = element(exts)?;
    exts = next;
    if tag != 0x30 {
      return None;
    }
    let (oid_tag, oid, mut rest) = element(ext)?;
    if oid_tag != 0x06 || oid != OID_SAN {
      continue;
    }
    // critical BOOLEAN DEFAULT FALSE, then extnValue OCTET STRING holding GeneralNames.
    if rest.first() == Some(&0x01) {
      rest = element(rest)?.2;
    }
    let (octets_tag, octets, _) = element(rest)?;
    if octets_tag != 0x04 {
      return None;
    }
    let mut names = sequence(octets)?;
    while !names.is_empty() {
      let (tag, _, next) = element(names)?;
      if tag == SAN_DNS || tag == SAN_IP {
        return Some(true);
      }
      names = next;
    }
  }
  Some(false)
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
    cert_with(subject, with_version, None)
  }

  /// A subjectAltName extension with these GeneralNames (tag, bytes), as a `[3]` extensions field.
  fn san(names: &[(u8, &[u8])]) -> Vec<u8> {
    let general: Vec<u8> = names.iter().flat_map(|(t, b)| tlv(*t, b)).collect();
    let ext = tlv(0x30, &[tlv(0x06, OID_SAN), tlv(0x04, &tlv(0x30, &general))].concat());
    let other = tlv(0x30, &[tlv(0x06, &[0x55, 0x1d, 0x13]), tlv(0x01, &[0xff]), tlv(0x04, &tlv(0x30, &[]))].concat());
    tlv(0xa3, &tlv(0x30, &[other, ext].concat()))
  }

  fn cert_with(subject: Vec<u8>, with_version: bool, extensions: Option<Vec<u8>>) -> Vec<u8> {
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
    if let Some(e) = extensions {
      tbs.extend(e);
    }
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

  #[test]
  fn like_gnutls_no_cn_when_a_subject_alt_name_names_a_host_or_there_are_two_cns() {
    let subject = || name(b"10.0.0.1", 0x0c);
    // A SAN naming another host (DNS or IP): its CN is not a name, whatever it says.
    assert_eq!(subject_cn(&cert_with(subject(), true, Some(san(&[(SAN_DNS, b"host-b")])))), None);
    assert_eq!(subject_cn(&cert_with(subject(), true, Some(san(&[(SAN_IP, &[10, 0, 0, 2])])))), None);
    // A SAN with only an e-mail (rfc822Name [1]): the CN still counts.
    assert_eq!(
      subject_cn(&cert_with(subject(), true, Some(san(&[(0x81, b"a@b.example")])))).as_deref(),
      Some("10.0.0.1")
    );
    // Two CNs: none.
    let c1 = tlv(0x31, &tlv(0x30, &[tlv(0x06, OID_CN), tlv(0x0c, b"10.0.0.1")].concat()));
    let c2 = tlv(0x31, &tlv(0x30, &[tlv(0x06, OID_CN), tlv(0x0c, b"10.0.0.9")].concat()));
    assert_eq!(subject_cn(&cert(tlv(0x30, &[c1, c2].concat()), true)), None);
  }
}
