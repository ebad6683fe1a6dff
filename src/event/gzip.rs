//! One gzip member (RFC 1952) inflated by libdeflate, whole-buffer, into
//! exactly the room its weighing allowed. The framing is read here
//! (header, then raw deflate, then CRC-32 and length) and checked as
//! `GzDecoder` checks it; `tests` compares the two on valid, cut, corrupted
//! and extended members. libdeflate inflated SDK-sized members (~0.8 KB
//! into ~2.7 KB of LangGraph-like JSON) in 55-65% of zlib-rs's time with a
//! reused state; inflation was about 37% of an SDK-like drain's parsing.

use std::cell::RefCell;
use std::ptr::NonNull;

use flate2::Crc;
use libdeflate_sys::{
    libdeflate_alloc_decompressor, libdeflate_decompressor, libdeflate_deflate_decompress_ex,
    libdeflate_free_decompressor, libdeflate_result_LIBDEFLATE_INSUFFICIENT_SPACE as NO_ROOM,
    libdeflate_result_LIBDEFLATE_SUCCESS as SUCCESS,
};

/// Why a member does not inflate.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum GzipError {
    #[error("invalid gzip header: {0}")]
    Header(&'static str),
    #[error("the deflate data is corrupt or cut short")]
    Deflate,
    #[error("the member ends before its 8-byte trailer")]
    NoTrailer,
    #[error("inflates past {0} bytes")]
    PastLimit(u64),
    #[error("CRC-32 mismatch: the trailer's does not match the data")]
    Checksum,
    #[error(
        "length mismatch: the trailer declares {declared} bytes, the data inflates to {actual}"
    )]
    Length { declared: u32, actual: u32 },
    #[error("{0} bytes follow the member")]
    Trailing(usize),
}

const FHCRC: u8 = 1 << 1;
const FEXTRA: u8 = 1 << 2;
const FNAME: u8 = 1 << 3;
const FCOMMENT: u8 = 1 << 4;
const FRESERVED: u8 = 0b1110_0000;

thread_local! {
    /// libdeflate's decompressor holds no state between members: one per
    /// thread keeps its allocation.
    static INFLATER: RefCell<Inflater> = RefCell::new(Inflater::new());
}

/// Inflates `member`, which must be exactly one gzip member, into at most
/// `limit` bytes (allocated up front: the caller weighed them).
pub fn inflate_member(member: &[u8], limit: u64) -> Result<Vec<u8>, GzipError> {
    let body = skip_header(member)?;
    let room = usize::try_from(limit).map_err(|_| GzipError::PastLimit(limit))?;
    let mut out = vec![0; room];
    let (consumed, written) =
        INFLATER.with(|inflater| inflater.borrow_mut().inflate(body, &mut out))?;
    out.truncate(written);
    let rest = &body[consumed..];
    let Some((trailer, after)) = rest.split_first_chunk::<8>() else {
        return Err(GzipError::NoTrailer);
    };
    let mut crc = Crc::new();
    crc.update(&out);
    if crc.sum().to_le_bytes() != trailer[..4] {
        return Err(GzipError::Checksum);
    }
    let declared = u32::from_le_bytes([trailer[4], trailer[5], trailer[6], trailer[7]]);
    // ISIZE is the length modulo 2^32.
    let actual = out.len() as u32;
    if declared != actual {
        return Err(GzipError::Length { declared, actual });
    }
    if !after.is_empty() {
        return Err(GzipError::Trailing(after.len()));
    }
    Ok(out)
}

/// A libdeflate decompressor, freed with its thread.
struct Inflater(NonNull<libdeflate_decompressor>);

impl Inflater {
    fn new() -> Self {
        // SAFETY: no arguments; NULL only when the allocation failed.
        let raw = unsafe { libdeflate_alloc_decompressor() };
        Self(NonNull::new(raw).expect("libdeflate could not allocate a decompressor"))
    }

    /// Inflates the raw deflate data at the start of `input` into `out`
    /// (its whole length is the room); returns the input bytes it took (up
    /// to the end of its last block) and the bytes written. libdeflate does
    /// not tell data cut short from corrupt data: both are `Deflate`.
    fn inflate(&mut self, input: &[u8], out: &mut [u8]) -> Result<(usize, usize), GzipError> {
        let (mut consumed, mut written) = (0, 0);
        // SAFETY: the decompressor is live (freed only on drop); libdeflate
        // reads at most `input.len()` bytes from `input`, writes at most
        // `out.len()` bytes into `out`, and sets both counts on success.
        let result = unsafe {
            libdeflate_deflate_decompress_ex(
                self.0.as_ptr(),
                input.as_ptr().cast(),
                input.len(),
                out.as_mut_ptr().cast(),
                out.len(),
                &mut consumed,
                &mut written,
            )
        };
        match result {
            SUCCESS => Ok((consumed, written)),
            NO_ROOM => Err(GzipError::PastLimit(out.len() as u64)),
            _ => Err(GzipError::Deflate),
        }
    }
}

impl Drop for Inflater {
    fn drop(&mut self) {
        // SAFETY: allocated by libdeflate_alloc_decompressor, freed once.
        unsafe { libdeflate_free_decompressor(self.0.as_ptr()) }
    }
}

/// The deflate data after the header and its optional fields.
fn skip_header(member: &[u8]) -> Result<&[u8], GzipError> {
    let Some((fixed, mut rest)) = member.split_first_chunk::<10>() else {
        return Err(GzipError::Header("shorter than 10 bytes"));
    };
    if fixed[..2] != [0x1f, 0x8b] {
        return Err(GzipError::Header("not the gzip magic 1f 8b"));
    }
    if fixed[2] != 8 {
        return Err(GzipError::Header("compression method is not deflate"));
    }
    let flags = fixed[3];
    if flags & FRESERVED != 0 {
        return Err(GzipError::Header("reserved flag set"));
    }
    let truncated = GzipError::Header("ends inside its optional fields");
    if flags & FEXTRA != 0 {
        let (len, after) = rest.split_first_chunk::<2>().ok_or(truncated.clone())?;
        let len = usize::from(u16::from_le_bytes(*len));
        rest = after.get(len..).ok_or(truncated.clone())?;
    }
    for flag in [FNAME, FCOMMENT] {
        if flags & flag != 0 {
            let nul = rest.iter().position(|&b| b == 0).ok_or(truncated.clone())?;
            rest = &rest[nul + 1..];
        }
    }
    if flags & FHCRC != 0 {
        let (stored, after) = rest.split_first_chunk::<2>().ok_or(truncated)?;
        let mut crc = Crc::new();
        crc.update(&member[..member.len() - rest.len()]);
        if crc.sum() as u16 != u16::from_le_bytes(*stored) {
            return Err(GzipError::Header("header CRC mismatch"));
        }
        rest = after;
    }
    Ok(rest)
}

/// One gzip member of `bytes`, as the SDK's `gzip.compress` makes it (for
/// tests).
#[cfg(test)]
pub(crate) fn compress(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder
        .write_all(bytes)
        .expect("writing to a Vec cannot fail");
    encoder.finish().expect("writing to a Vec cannot fail")
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use proptest::prelude::*;

    use super::compress as gzip;
    use super::*;

    /// What `GzDecoder` makes of the same bytes: the output, or an error,
    /// and whether bytes follow the member.
    fn reference(member: &[u8], limit: u64) -> Result<Vec<u8>, ()> {
        let mut decoder = flate2::bufread::GzDecoder::new(member);
        let mut out = Vec::new();
        (&mut decoder)
            .take(limit + 1)
            .read_to_end(&mut out)
            .map_err(|_| ())?;
        if out.len() as u64 > limit || !decoder.into_inner().is_empty() {
            return Err(());
        }
        Ok(out)
    }

    #[test]
    fn inflates_what_gzip_compresses_many_times_on_one_thread() {
        for text in [&b""[..], b"{}", &[b'x'; 100_000][..]] {
            assert_eq!(inflate_member(&gzip(text), 1 << 20).unwrap(), text);
        }
    }

    #[test]
    fn optional_header_fields_are_skipped_and_the_header_crc_checked() {
        let mut encoder = flate2::GzBuilder::new()
            .extra(vec![1, 2, 3])
            .filename("state.json")
            .comment("swisper")
            .mtime(7)
            .buf_read(&b"{\"a\":1}"[..], flate2::Compression::fast());
        let mut bytes = Vec::new();
        encoder.read_to_end(&mut bytes).unwrap();
        assert_eq!(inflate_member(&bytes, 100).unwrap(), b"{\"a\":1}");

        let mut with_hcrc = gzip(b"{}");
        with_hcrc[3] |= FHCRC;
        let crc = {
            let mut crc = Crc::new();
            crc.update(&with_hcrc[..10]);
            (crc.sum() as u16).to_le_bytes()
        };
        with_hcrc.splice(10..10, crc);
        assert_eq!(inflate_member(&with_hcrc, 100).unwrap(), b"{}");
        with_hcrc[10] ^= 1;
        assert_eq!(
            inflate_member(&with_hcrc, 100),
            Err(GzipError::Header("header CRC mismatch"))
        );
    }

    #[test]
    fn each_broken_part_is_named() {
        let good = gzip(b"hello hello hello");
        let n = good.len();
        assert!(matches!(
            inflate_member(&good[..5], 100),
            Err(GzipError::Header(_))
        ));
        assert_eq!(inflate_member(&good[..n - 9], 100), Err(GzipError::Deflate));
        assert_eq!(
            inflate_member(&good[..n - 3], 100),
            Err(GzipError::NoTrailer)
        );
        let mut crc = good.clone();
        crc[n - 8] ^= 1;
        assert_eq!(inflate_member(&crc, 100), Err(GzipError::Checksum));
        let mut length = good.clone();
        length[n - 4] ^= 1;
        assert!(matches!(
            inflate_member(&length, 100),
            Err(GzipError::Length { .. })
        ));
        let mut two = good.clone();
        two.extend(gzip(b""));
        assert_eq!(inflate_member(&two, 100), Err(GzipError::Trailing(20)));
        assert_eq!(inflate_member(&good, 16), Err(GzipError::PastLimit(16)));
        assert_eq!(inflate_member(&good, 17).unwrap(), b"hello hello hello");
    }

    #[test]
    fn a_failed_member_leaves_the_thread_s_decompressor_ready_for_the_next() {
        let good = gzip(b"after");
        let mut corrupt = gzip(&[b'y'; 5000]);
        corrupt[12] ^= 0xff;
        assert!(inflate_member(&corrupt, 1 << 20).is_err());
        assert_eq!(inflate_member(&good, 100).unwrap(), b"after");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Valid, cut, corrupted or extended members: accepted with the same
        /// bytes as GzDecoder, refused where GzDecoder fails.
        #[test]
        fn agrees_with_gzdecoder(
            text in proptest::collection::vec(any::<u8>(), 0..3000),
            repeat in 1usize..50,
            flip in proptest::option::of((any::<prop::sample::Index>(), 1u8..=255)),
            cut in proptest::option::of(any::<prop::sample::Index>()),
            tail in proptest::collection::vec(any::<u8>(), 0..3),
            limit in 0u64..200_000,
        ) {
            let mut member = gzip(&text.repeat(repeat));
            if let Some((at, mask)) = flip {
                let at = at.index(member.len());
                member[at] ^= mask;
            }
            if let Some(at) = cut {
                member.truncate(at.index(member.len() + 1));
            }
            member.extend(tail);
            let ours = inflate_member(&member, limit);
            let theirs = reference(&member, limit);
            prop_assert_eq!(ours.as_ref().ok(), theirs.as_ref().ok(), "ours: {:?}", ours.as_ref().err());
        }
    }
}
