//! Response APDUs: a data field followed by a status word.

use std::fmt;

use super::{ApduError, StatusWord};

/// A response APDU: response data and the status word that ends it.
///
/// `Debug` shows only the length of the data, which may hold key material.
#[derive(Clone, PartialEq, Eq)]
pub struct ResponseApdu {
    data: Vec<u8>,
    sw: StatusWord,
}

impl ResponseApdu {
    /// A response with data and a status word.
    pub fn new(data: Vec<u8>, sw: StatusWord) -> Self {
        Self { data, sw }
    }

    /// A response that is only a status word.
    pub fn status(sw: StatusWord) -> Self {
        Self {
            data: Vec::new(),
            sw,
        }
    }

    /// `data` followed by `9000`.
    pub fn success(data: Vec<u8>) -> Self {
        Self {
            data,
            sw: StatusWord::Success,
        }
    }

    /// Splits received bytes into data and the trailing status word.
    pub fn parse(bytes: &[u8]) -> Result<Self, ApduError> {
        match bytes.split_last_chunk::<2>() {
            Some((data, [sw1, sw2])) => Ok(Self {
                data: data.to_vec(),
                sw: StatusWord::from_bytes(*sw1, *sw2),
            }),
            None => Err(ApduError::ResponseTooShort(bytes.len())),
        }
    }

    /// Data followed by SW1 SW2.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.data.len() + 2);
        out.extend_from_slice(&self.data);
        out.extend_from_slice(&self.sw.to_bytes());
        out
    }

    /// The response data (empty when absent).
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// Takes the response data.
    pub fn into_data(self) -> Vec<u8> {
        self.data
    }

    /// The status word.
    pub fn sw(&self) -> StatusWord {
        self.sw
    }

    /// Whether the status word reports normal processing (`9000` or `61xx`).
    pub fn is_success(&self) -> bool {
        self.sw.is_success()
    }
}

impl fmt::Debug for ResponseApdu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseApdu")
            .field("data_len", &self.data.len())
            .field("sw", &format_args!("{}", self.sw))
            .finish()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn a_response_splits_into_data_and_status_word() {
        let response = ResponseApdu::parse(&[0x01, 0x02, 0x61, 0x10]).unwrap();
        assert_eq!(response.data(), &[0x01, 0x02]);
        assert_eq!(response.sw(), StatusWord::BytesRemaining(0x10));
        assert!(response.is_success());
        assert_eq!(response.to_bytes(), [0x01, 0x02, 0x61, 0x10]);
    }

    #[test]
    fn a_bare_status_word_has_no_data() {
        let response = ResponseApdu::parse(&[0x6A, 0x82]).unwrap();
        assert_eq!(response, ResponseApdu::status(StatusWord::NotFound));
        assert!(!response.is_success());
    }

    #[test]
    fn fewer_than_two_bytes_is_an_error() {
        assert_eq!(
            ResponseApdu::parse(&[0x90]),
            Err(ApduError::ResponseTooShort(1))
        );
    }
}
