//! Command APDUs: parsing from bytes and encoding to bytes in short or extended length form.

use std::fmt;

use zeroize::Zeroize;

/// CLA bit that marks a command as "not the last of a chain" (ISO 7816-4, 5.4.1).
pub const CLA_CHAINING: u8 = 0x10;
/// Largest data field a short APDU carries.
pub const MAX_SHORT_DATA: usize = 255;
/// Largest Ne a short APDU expresses (Le = `00`).
pub const MAX_SHORT_NE: usize = 256;
/// Largest data field an extended APDU carries.
pub const MAX_EXTENDED_DATA: usize = 65_535;
/// Largest Ne an extended APDU expresses (Le = `00 00`).
pub const MAX_EXTENDED_NE: usize = 65_536;

/// Why bytes are not a valid APDU, or why an APDU cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApduError {
    /// Fewer than the four header bytes.
    #[error("command APDU of {0} bytes is shorter than its 4-byte header")]
    TooShort(usize),
    /// The Lc and Le fields do not account for the bytes received.
    #[error("length fields of a {0}-byte command APDU do not match its size")]
    InconsistentLength(usize),
    /// More data than an extended APDU can carry.
    #[error("command data of {0} bytes exceeds the maximum of 65535")]
    DataTooLong(usize),
    /// Ne outside `1..=65536`.
    #[error("expected response length {0} is outside 1..=65536")]
    InvalidNe(usize),
    /// Fewer than the two status bytes.
    #[error("response APDU of {0} bytes is shorter than its 2-byte status word")]
    ResponseTooShort(usize),
}

/// A command APDU: header, optional data field and optional expected response length (Ne).
///
/// The encoding form is chosen when serializing: short when the data fits in 255 bytes and Ne
/// is at most 256, extended otherwise. The data field is zeroized on drop because it often
/// carries PINs or keys, and `Debug` shows only its length.
#[derive(Clone, PartialEq, Eq)]
pub struct CommandApdu {
    cla: u8,
    ins: u8,
    p1: u8,
    p2: u8,
    data: Vec<u8>,
    ne: Option<usize>,
}

impl CommandApdu {
    /// A command with the given header, no data and no Le.
    pub fn new(cla: u8, ins: u8, p1: u8, p2: u8) -> Self {
        Self {
            cla,
            ins,
            p1,
            p2,
            data: Vec::new(),
            ne: None,
        }
    }

    /// Sets the data field.
    pub fn with_data(mut self, data: impl Into<Vec<u8>>) -> Result<Self, ApduError> {
        let data = data.into();
        if data.len() > MAX_EXTENDED_DATA {
            return Err(ApduError::DataTooLong(data.len()));
        }
        self.data.zeroize();
        self.data = data;
        Ok(self)
    }

    /// Sets the expected response length Ne (`256` encodes as short Le `00`, `65536` as
    /// extended Le `00 00`).
    pub fn with_ne(mut self, ne: usize) -> Result<Self, ApduError> {
        if ne == 0 || ne > MAX_EXTENDED_NE {
            return Err(ApduError::InvalidNe(ne));
        }
        self.ne = Some(ne);
        Ok(self)
    }

    /// Sets or clears the chaining bit in CLA.
    pub fn with_chaining(mut self, chained: bool) -> Self {
        if chained {
            self.cla |= CLA_CHAINING;
        } else {
            self.cla &= !CLA_CHAINING;
        }
        self
    }

    /// Parses the four ISO 7816-3 cases in short and extended form.
    pub fn parse(bytes: &[u8]) -> Result<Self, ApduError> {
        let total = bytes.len();
        let (header, body) = match bytes.split_first_chunk::<4>() {
            Some(split) => split,
            None => return Err(ApduError::TooShort(total)),
        };
        let [cla, ins, p1, p2] = *header;
        let inconsistent = ApduError::InconsistentLength(total);
        let (data, ne): (&[u8], Option<usize>) = match body {
            // Case 1.
            [] => (&[], None),
            // Case 2 short.
            [le] => (&[], Some(short_ne(*le))),
            // Extended cases start with a zero byte followed by two length bytes.
            [0, b1, b2, rest @ ..] => {
                let n = usize::from(u16::from_be_bytes([*b1, *b2]));
                match rest {
                    // Case 2 extended.
                    [] => (&[], Some(extended_ne(n))),
                    // Case 3 extended.
                    data if n != 0 && data.len() == n => (data, None),
                    // Case 4 extended.
                    [data @ .., le1, le2] if n != 0 && data.len() == n => (
                        data,
                        Some(extended_ne(usize::from(u16::from_be_bytes([*le1, *le2])))),
                    ),
                    _ => return Err(inconsistent),
                }
            }
            [lc, rest @ ..] => {
                let n = usize::from(*lc);
                match rest {
                    // Case 3 short.
                    data if data.len() == n => (data, None),
                    // Case 4 short.
                    [data @ .., le] if data.len() == n => (data, Some(short_ne(*le))),
                    _ => return Err(inconsistent),
                }
            }
        };
        Ok(Self {
            cla,
            ins,
            p1,
            p2,
            data: data.to_vec(),
            ne,
        })
    }

    /// Encodes the command, in extended form only when the data or Ne need it.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + 3 + self.data.len() + 3);
        out.extend_from_slice(&[self.cla, self.ins, self.p1, self.p2]);
        let extended = self.is_extended();
        if !self.data.is_empty() {
            if extended {
                out.push(0);
                out.extend_from_slice(&len_u16(self.data.len()).to_be_bytes());
            } else {
                out.push(len_u8(self.data.len()));
            }
            out.extend_from_slice(&self.data);
        }
        if let Some(ne) = self.ne {
            if extended {
                if self.data.is_empty() {
                    out.push(0);
                }
                out.extend_from_slice(&len_u16(ne).to_be_bytes());
            } else {
                out.push(len_u8(ne));
            }
        }
        out
    }

    /// Whether [`CommandApdu::to_bytes`] uses the extended length form.
    pub fn is_extended(&self) -> bool {
        self.data.len() > MAX_SHORT_DATA || self.ne.is_some_and(|ne| ne > MAX_SHORT_NE)
    }

    /// Splits the command into a chain of commands whose data fields hold at most `chunk`
    /// bytes: every command but the last has the chaining bit set, and only the last keeps Ne.
    /// A command without data stays a single command.
    pub fn into_chain(self, chunk: usize) -> Vec<CommandApdu> {
        let chunk = chunk.clamp(1, MAX_EXTENDED_DATA);
        if self.data.len() <= chunk {
            return vec![self];
        }
        let pieces: Vec<&[u8]> = self.data.chunks(chunk).collect();
        let last = pieces.len() - 1;
        pieces
            .into_iter()
            .enumerate()
            .map(|(i, piece)| CommandApdu {
                cla: if i == last {
                    self.cla & !CLA_CHAINING
                } else {
                    self.cla | CLA_CHAINING
                },
                ins: self.ins,
                p1: self.p1,
                p2: self.p2,
                data: piece.to_vec(),
                ne: if i == last { self.ne } else { None },
            })
            .collect()
    }

    /// Class byte.
    pub fn cla(&self) -> u8 {
        self.cla
    }

    /// Instruction byte.
    pub fn ins(&self) -> u8 {
        self.ins
    }

    /// First parameter byte.
    pub fn p1(&self) -> u8 {
        self.p1
    }

    /// Second parameter byte.
    pub fn p2(&self) -> u8 {
        self.p2
    }

    /// P1 and P2 as one big-endian number.
    pub fn p1p2(&self) -> u16 {
        u16::from_be_bytes([self.p1, self.p2])
    }

    /// The data field (empty when absent).
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// Expected response length Ne, if an Le field is present.
    pub fn ne(&self) -> Option<usize> {
        self.ne
    }

    /// Whether the CLA chaining bit says more commands of this chain follow.
    pub fn is_chained(&self) -> bool {
        self.cla & CLA_CHAINING != 0
    }
}

impl Drop for CommandApdu {
    fn drop(&mut self) {
        self.data.zeroize();
    }
}

impl fmt::Debug for CommandApdu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CommandApdu")
            .field("cla", &format_args!("{:02X}", self.cla))
            .field("ins", &format_args!("{:02X}", self.ins))
            .field("p1", &format_args!("{:02X}", self.p1))
            .field("p2", &format_args!("{:02X}", self.p2))
            .field("data_len", &self.data.len())
            .field("ne", &self.ne)
            .finish()
    }
}

fn short_ne(le: u8) -> usize {
    if le == 0 {
        MAX_SHORT_NE
    } else {
        usize::from(le)
    }
}

fn extended_ne(le: usize) -> usize {
    if le == 0 { MAX_EXTENDED_NE } else { le }
}

/// Short length byte; 256 wraps to 0 as ISO 7816 encodes it. Callers guarantee `len <= 256`.
fn len_u8(len: usize) -> u8 {
    (len & 0xFF) as u8
}

/// Extended length field; 65536 wraps to 0. Callers guarantee `len <= 65536`.
fn len_u16(len: usize) -> u16 {
    (len & 0xFFFF) as u16
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn apdu(bytes: &[u8]) -> CommandApdu {
        CommandApdu::parse(bytes).unwrap()
    }

    #[test]
    fn the_four_short_cases_parse() {
        let c1 = apdu(&[0x00, 0xA4, 0x04, 0x00]);
        assert_eq!((c1.data(), c1.ne()), (&[][..], None));

        let c2 = apdu(&[0x00, 0xC0, 0x00, 0x00, 0x00]);
        assert_eq!((c2.data(), c2.ne()), (&[][..], Some(256)));

        let c3 = apdu(&[0x00, 0x20, 0x00, 0x80, 0x02, 0x31, 0x32]);
        assert_eq!((c3.data(), c3.ne()), (&[0x31, 0x32][..], None));

        let c4 = apdu(&[0x00, 0xCB, 0x3F, 0xFF, 0x01, 0x7E, 0x10]);
        assert_eq!((c4.data(), c4.ne()), (&[0x7E][..], Some(16)));
        assert_eq!(c4.p1p2(), 0x3FFF);
    }

    #[test]
    fn the_extended_cases_parse() {
        let c2 = apdu(&[0x00, 0xC0, 0x00, 0x00, 0x00, 0x00, 0x00]);
        assert_eq!(c2.ne(), Some(65_536));

        let data = vec![0xAB; 300];
        let mut c3 = vec![0x00, 0xDB, 0x3F, 0xFF, 0x00, 0x01, 0x2C];
        c3.extend_from_slice(&data);
        assert_eq!(apdu(&c3).data(), &data[..]);

        let mut c4 = c3.clone();
        c4.extend_from_slice(&[0x01, 0x00]);
        let parsed = apdu(&c4);
        assert_eq!((parsed.data().len(), parsed.ne()), (300, Some(256)));
    }

    #[test]
    fn inconsistent_lengths_are_rejected() {
        for bad in [
            &[0x00, 0xA4][..],
            &[0x00, 0xA4, 0x04, 0x00, 0x05, 0xA0],
            &[0x00, 0xA4, 0x04, 0x00, 0x01, 0xA0, 0x00, 0x00],
            &[0x00, 0xDB, 0x3F, 0xFF, 0x00, 0x00, 0x02, 0x01],
            &[0x00, 0xDB, 0x3F, 0xFF, 0x00, 0x00, 0x00, 0x01],
        ] {
            assert!(CommandApdu::parse(bad).is_err(), "{bad:02X?}");
        }
        assert_eq!(CommandApdu::parse(&[0x00]), Err(ApduError::TooShort(1)));
    }

    #[test]
    fn encoding_picks_short_or_extended_form_and_round_trips() {
        let short = CommandApdu::new(0x00, 0xCB, 0x3F, 0xFF)
            .with_data(vec![0x5C, 0x01, 0x7E])
            .unwrap()
            .with_ne(256)
            .unwrap();
        assert_eq!(
            short.to_bytes(),
            [0x00, 0xCB, 0x3F, 0xFF, 0x03, 0x5C, 0x01, 0x7E, 0x00]
        );
        assert!(!short.is_extended());

        let only_le = CommandApdu::new(0x00, 0xC0, 0, 0).with_ne(1000).unwrap();
        assert_eq!(
            only_le.to_bytes(),
            [0x00, 0xC0, 0x00, 0x00, 0x00, 0x03, 0xE8]
        );

        let long = CommandApdu::new(0x00, 0xDB, 0x3F, 0xFF)
            .with_data(vec![1; 256])
            .unwrap()
            .with_ne(65_536)
            .unwrap();
        let bytes = long.to_bytes();
        assert_eq!(&bytes[4..7], &[0x00, 0x01, 0x00]);
        assert_eq!(&bytes[bytes.len() - 2..], &[0x00, 0x00]);

        for cmd in [short, only_le, long] {
            assert_eq!(CommandApdu::parse(&cmd.to_bytes()).unwrap(), cmd);
        }
    }

    #[test]
    fn builders_reject_out_of_range_values() {
        let base = CommandApdu::new(0, 0, 0, 0);
        assert_eq!(base.clone().with_ne(0), Err(ApduError::InvalidNe(0)));
        assert_eq!(
            base.clone().with_ne(65_537),
            Err(ApduError::InvalidNe(65_537))
        );
        assert_eq!(
            base.with_data(vec![0; 65_536]),
            Err(ApduError::DataTooLong(65_536))
        );
    }

    #[test]
    fn a_long_command_splits_into_a_chain() {
        let cmd = CommandApdu::new(0x00, 0xDB, 0x3F, 0xFF)
            .with_data((0..=255u8).chain(0..100).collect::<Vec<_>>())
            .unwrap()
            .with_ne(256)
            .unwrap();
        let chain = cmd.into_chain(255);
        assert_eq!(chain.len(), 2);
        assert!(chain[0].is_chained() && !chain[1].is_chained());
        assert_eq!(chain[0].cla(), 0x10);
        assert_eq!((chain[0].data().len(), chain[0].ne()), (255, None));
        assert_eq!((chain[1].data().len(), chain[1].ne()), (101, Some(256)));

        let single = CommandApdu::new(0x00, 0xA4, 0x04, 0x00).into_chain(255);
        assert_eq!(single.len(), 1);
    }

    #[test]
    fn debug_output_never_shows_the_data_field() {
        let verify = CommandApdu::new(0x00, 0x20, 0x00, 0x80)
            .with_data(b"123456\xFF\xFF".to_vec())
            .unwrap();
        let shown = format!("{verify:?}");
        assert!(
            !shown.contains("31") && !shown.contains("123456"),
            "{shown}"
        );
        assert!(shown.contains("data_len: 8"), "{shown}");
    }
}
