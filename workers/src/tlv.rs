//! BER-TLV encoding as ISO 7816-4 uses it: multi-byte tags, short and long-form lengths.

use std::fmt;

/// Longest tag accepted, in bytes.
const MAX_TAG_BYTES: usize = 4;
/// Longest long-form length field accepted after its `8x` byte.
const MAX_LENGTH_BYTES: usize = 4;

/// Why bytes are not the BER-TLV that was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlvError {
    /// The input ended inside a tag.
    #[error("input ends inside a tag")]
    TruncatedTag,
    /// A tag longer than four bytes.
    #[error("tag is longer than {MAX_TAG_BYTES} bytes")]
    TagTooLong,
    /// The input ended inside a length field.
    #[error("input ends inside a length field")]
    TruncatedLength,
    /// Indefinite length (`80`) is not allowed in ISO 7816 BER-TLV.
    #[error("indefinite length is not allowed")]
    IndefiniteLength,
    /// A long-form length of more than four bytes.
    #[error("length field is longer than {MAX_LENGTH_BYTES} bytes")]
    LengthTooLong,
    /// The value is shorter than its length field says.
    #[error("value needs {needed} bytes but only {available} remain")]
    TruncatedValue {
        /// Bytes the length field announces.
        needed: usize,
        /// Bytes left in the input.
        available: usize,
    },
    /// A different tag than the one required.
    #[error("expected tag {expected}, found {found}")]
    UnexpectedTag {
        /// The required tag.
        expected: Tag,
        /// The tag present.
        found: Tag,
    },
    /// Bytes after the last expected data object.
    #[error("{0} unexpected bytes after the data object")]
    TrailingBytes(usize),
    /// A required data object is absent.
    #[error("data object {0} is missing")]
    Missing(Tag),
}

/// A BER-TLV tag, stored as its encoded bytes read as a big-endian number (`5F C1 02` is
/// `Tag(0x5FC102)`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(u32);

impl Tag {
    /// The tag whose encoding, read big-endian, is `raw`. Meant for constants; use
    /// [`Tag::from_bytes`] for untrusted input.
    pub const fn new(raw: u32) -> Self {
        Self(raw)
    }

    /// Parses a complete encoded tag, rejecting trailing bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, TlvError> {
        let (tag, rest) = parse_tag(bytes)?;
        if rest.is_empty() {
            Ok(tag)
        } else {
            Err(TlvError::TrailingBytes(rest.len()))
        }
    }

    /// The encoding read as a big-endian number.
    pub const fn raw(self) -> u32 {
        self.0
    }

    /// The encoded tag bytes.
    pub fn to_bytes(self) -> Vec<u8> {
        let bytes = self.0.to_be_bytes();
        let skip = bytes.iter().take(3).take_while(|b| **b == 0).count();
        bytes[skip..].to_vec()
    }

    /// Whether the constructed bit (b6 of the first byte) is set.
    pub fn is_constructed(self) -> bool {
        self.to_bytes().first().is_some_and(|b| b & 0x20 != 0)
    }
}

impl fmt::Debug for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tag({self})")
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.to_bytes() {
            write!(f, "{byte:02X}")?;
        }
        Ok(())
    }
}

/// Tags serialize as hex strings (`"5FC102"`), readable in state files and usable as map keys.
impl serde::Serialize for Tag {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Tag {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <String as serde::Deserialize>::deserialize(deserializer)?;
        let bytes = hex::decode(&text).map_err(serde::de::Error::custom)?;
        Tag::from_bytes(&bytes).map_err(serde::de::Error::custom)
    }
}

/// One data object borrowed from its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tlv<'a> {
    /// The tag.
    pub tag: Tag,
    /// The value bytes (for constructed tags, the nested encoding).
    pub value: &'a [u8],
}

impl<'a> Tlv<'a> {
    /// The data objects nested in this one's value.
    pub fn children(&self) -> TlvIter<'a> {
        iter(self.value)
    }
}

/// Reads a tag and returns it with the rest of the input.
pub fn parse_tag(input: &[u8]) -> Result<(Tag, &[u8]), TlvError> {
    let (&first, mut rest) = input.split_first().ok_or(TlvError::TruncatedTag)?;
    let mut raw = u32::from(first);
    let mut len = 1;
    if first & 0x1F == 0x1F {
        loop {
            let (&next, tail) = rest.split_first().ok_or(TlvError::TruncatedTag)?;
            len += 1;
            if len > MAX_TAG_BYTES {
                return Err(TlvError::TagTooLong);
            }
            raw = (raw << 8) | u32::from(next);
            rest = tail;
            if next & 0x80 == 0 {
                break;
            }
        }
    }
    Ok((Tag(raw), rest))
}

/// Reads a length field and returns it with the rest of the input.
pub fn parse_length(input: &[u8]) -> Result<(usize, &[u8]), TlvError> {
    let (&first, rest) = input.split_first().ok_or(TlvError::TruncatedLength)?;
    if first < 0x80 {
        return Ok((usize::from(first), rest));
    }
    let count = usize::from(first & 0x7F);
    if count == 0 {
        return Err(TlvError::IndefiniteLength);
    }
    if count > MAX_LENGTH_BYTES {
        return Err(TlvError::LengthTooLong);
    }
    if rest.len() < count {
        return Err(TlvError::TruncatedLength);
    }
    let (digits, rest) = rest.split_at(count);
    let len = digits
        .iter()
        .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
    Ok((len, rest))
}

/// Reads one data object and returns it with the rest of the input.
pub fn parse_one(input: &[u8]) -> Result<(Tlv<'_>, &[u8]), TlvError> {
    let (tag, rest) = parse_tag(input)?;
    let (len, rest) = parse_length(rest)?;
    if rest.len() < len {
        return Err(TlvError::TruncatedValue {
            needed: len,
            available: rest.len(),
        });
    }
    let (value, rest) = rest.split_at(len);
    Ok((Tlv { tag, value }, rest))
}

/// Reads exactly one data object with the given tag, with nothing after it.
pub fn parse_single(input: &[u8], tag: Tag) -> Result<&[u8], TlvError> {
    let (tlv, rest) = parse_one(input)?;
    if tlv.tag != tag {
        return Err(TlvError::UnexpectedTag {
            expected: tag,
            found: tlv.tag,
        });
    }
    if !rest.is_empty() {
        return Err(TlvError::TrailingBytes(rest.len()));
    }
    Ok(tlv.value)
}

/// Iterates over consecutive data objects; stops after the first error.
pub fn iter(input: &[u8]) -> TlvIter<'_> {
    TlvIter { rest: input }
}

/// Reads all consecutive data objects of the input.
pub fn parse_all(input: &[u8]) -> Result<Vec<Tlv<'_>>, TlvError> {
    iter(input).collect()
}

/// The value of the first top-level data object with the tag, if any.
pub fn find(input: &[u8], tag: Tag) -> Result<Option<&[u8]>, TlvError> {
    for tlv in iter(input) {
        let tlv = tlv?;
        if tlv.tag == tag {
            return Ok(Some(tlv.value));
        }
    }
    Ok(None)
}

/// Iterator over consecutive data objects, see [`iter`].
#[derive(Debug, Clone)]
pub struct TlvIter<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for TlvIter<'a> {
    type Item = Result<Tlv<'a>, TlvError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        match parse_one(self.rest) {
            Ok((tlv, rest)) => {
                self.rest = rest;
                Some(Ok(tlv))
            }
            Err(err) => {
                self.rest = &[];
                Some(Err(err))
            }
        }
    }
}

/// Appends the minimal encoding of a length.
pub fn encode_length(len: usize, out: &mut Vec<u8>) {
    if len < 0x80 {
        out.push(len as u8);
        return;
    }
    let bytes = len.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    let digits = &bytes[skip..];
    out.push(0x80 | digits.len() as u8);
    out.extend_from_slice(digits);
}

/// Appends one data object.
pub fn write(out: &mut Vec<u8>, tag: Tag, value: &[u8]) {
    out.extend_from_slice(&tag.to_bytes());
    encode_length(value.len(), out);
    out.extend_from_slice(value);
}

/// Encodes one data object.
pub fn build(tag: Tag, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() + 8);
    write(&mut out, tag, value);
    out
}

/// Builds a sequence of data objects, with nesting.
///
/// ```
/// use cardfleet_worker::tlv::{Tag, TlvBuilder};
/// let template = TlvBuilder::new()
///     .nested(Tag::new(0x7C), |b| {
///         b.push(Tag::new(0x82), &[]).push(Tag::new(0x81), &[1, 2, 3]);
///     })
///     .finish();
/// assert_eq!(template, [0x7C, 0x07, 0x82, 0x00, 0x81, 0x03, 1, 2, 3]);
/// ```
#[derive(Debug, Default, Clone)]
pub struct TlvBuilder {
    buf: Vec<u8>,
}

impl TlvBuilder {
    /// An empty sequence.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a primitive data object.
    pub fn push(&mut self, tag: Tag, value: &[u8]) -> &mut Self {
        write(&mut self.buf, tag, value);
        self
    }

    /// Appends a constructed data object whose value `fill` builds.
    pub fn nested(&mut self, tag: Tag, fill: impl FnOnce(&mut TlvBuilder)) -> &mut Self {
        let mut inner = TlvBuilder::new();
        fill(&mut inner);
        write(&mut self.buf, tag, &inner.buf);
        self
    }

    /// The encoded sequence.
    pub fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn single_and_multi_byte_tags_parse() {
        assert_eq!(
            parse_tag(&[0x53, 0x00]).unwrap(),
            (Tag::new(0x53), &[0x00][..])
        );
        assert_eq!(parse_tag(&[0x7F, 0x49, 0x01]).unwrap().0, Tag::new(0x7F49));
        assert_eq!(
            parse_tag(&[0x5F, 0xC1, 0x02]).unwrap().0,
            Tag::new(0x5FC102)
        );
        assert_eq!(parse_tag(&[0x5F, 0xC1]), Err(TlvError::TruncatedTag));
        assert_eq!(
            parse_tag(&[0x5F, 0x81, 0x82, 0x83, 0x04]),
            Err(TlvError::TagTooLong)
        );
        assert_eq!(parse_tag(&[]), Err(TlvError::TruncatedTag));
    }

    #[test]
    fn tags_encode_back_to_their_bytes() {
        assert_eq!(Tag::new(0x5FC102).to_bytes(), [0x5F, 0xC1, 0x02]);
        assert_eq!(Tag::new(0x7E).to_bytes(), [0x7E]);
        assert_eq!(Tag::new(0x00).to_bytes(), [0x00]);
        assert_eq!(Tag::from_bytes(&[0x7F, 0x61]).unwrap(), Tag::new(0x7F61));
        assert_eq!(
            Tag::from_bytes(&[0x7E, 0x00]),
            Err(TlvError::TrailingBytes(1))
        );
        assert!(Tag::new(0x7C).is_constructed() && !Tag::new(0x80).is_constructed());
        assert_eq!(Tag::new(0x5FC102).to_string(), "5FC102");
    }

    #[test]
    fn tags_serialize_as_hex_strings() {
        let json = serde_json::to_string(&Tag::new(0x5FC102)).unwrap();
        assert_eq!(json, "\"5FC102\"");
        assert_eq!(
            serde_json::from_str::<Tag>(&json).unwrap(),
            Tag::new(0x5FC102)
        );
        assert!(serde_json::from_str::<Tag>("\"5FC1\"").is_err());
    }

    #[test]
    fn short_and_long_lengths_parse_and_encode() {
        let cases: [(&[u8], usize); 5] = [
            (&[0x05], 5),
            (&[0x7F], 127),
            (&[0x81, 0x80], 128),
            (&[0x82, 0x01, 0x09], 265),
            (&[0x83, 0x01, 0x00, 0x00], 65_536),
        ];
        for (bytes, len) in cases {
            assert_eq!(parse_length(bytes).unwrap(), (len, &[][..]), "{bytes:02X?}");
            let mut encoded = Vec::new();
            encode_length(len, &mut encoded);
            assert_eq!(encoded, bytes);
        }
        // Non-minimal long forms occur in the wild and are accepted.
        assert_eq!(parse_length(&[0x81, 0x05]).unwrap().0, 5);
        assert_eq!(parse_length(&[0x80]), Err(TlvError::IndefiniteLength));
        assert_eq!(
            parse_length(&[0x85, 1, 2, 3, 4, 5]),
            Err(TlvError::LengthTooLong)
        );
        assert_eq!(parse_length(&[0x82, 0x01]), Err(TlvError::TruncatedLength));
    }

    #[test]
    fn objects_parse_in_sequence_and_nested() {
        let bytes = [0x7C, 0x06, 0x80, 0x00, 0x81, 0x02, 0xAA, 0xBB, 0x90, 0x00];
        let all = parse_all(&bytes).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].tag, Tag::new(0x7C));
        let inner = all[0].children().collect::<Result<Vec<_>, _>>().unwrap();
        assert_eq!(
            inner[1],
            Tlv {
                tag: Tag::new(0x81),
                value: &[0xAA, 0xBB]
            }
        );
        assert_eq!(find(&bytes, Tag::new(0x90)).unwrap(), Some(&[][..]));
        assert_eq!(find(&bytes, Tag::new(0x91)).unwrap(), None);
    }

    #[test]
    fn truncated_values_and_wrong_tags_are_errors() {
        assert_eq!(
            parse_one(&[0x53, 0x04, 0x01]),
            Err(TlvError::TruncatedValue {
                needed: 4,
                available: 1
            })
        );
        assert_eq!(
            parse_single(&[0x53, 0x00, 0x00], Tag::new(0x53)),
            Err(TlvError::TrailingBytes(1))
        );
        assert_eq!(
            parse_single(&[0x54, 0x00], Tag::new(0x53)),
            Err(TlvError::UnexpectedTag {
                expected: Tag::new(0x53),
                found: Tag::new(0x54)
            })
        );
        let mut it = iter(&[0x53, 0x01, 0x00, 0x54, 0x05]);
        assert!(it.next().unwrap().is_ok());
        assert!(it.next().unwrap().is_err());
        assert!(it.next().is_none());
    }

    #[test]
    fn long_values_round_trip() {
        let value = vec![0x42; 300];
        let encoded = build(Tag::new(0x5FC105), &value);
        assert_eq!(&encoded[..6], &[0x5F, 0xC1, 0x05, 0x82, 0x01, 0x2C]);
        assert_eq!(
            parse_single(&encoded, Tag::new(0x5FC105)).unwrap(),
            &value[..]
        );
    }
}
