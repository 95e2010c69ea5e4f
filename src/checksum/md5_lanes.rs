//! md5 of many messages at once, one message per SIMD lane (16 with AVX-512; one message
//! after another elsewhere).
//!
//! md5 is a chain of dependent steps, so one message cannot go faster than about 600 MB/s on
//! a core, and x86 has no md5 instruction (unlike sha1 and sha256). Small files come many at
//! a time, though: hashed side by side, each in its own lane, sixteen cost about what two do
//! one after another. The lanes share one scalar description of the rounds, which the
//! compiler turns into vector code for each instruction set.

/// Bytes in an md5 block.
const BLOCK: usize = 64;

/// The per-step additive constants (the integer part of 2^32 x |sin(i + 1)|).
const K: [u32; 64] = [
    0xd76aa478, 0xe8c7b756, 0x242070db, 0xc1bdceee, 0xf57c0faf, 0x4787c62a, 0xa8304613, 0xfd469501, 0x698098d8,
    0x8b44f7af, 0xffff5bb1, 0x895cd7be, 0x6b901122, 0xfd987193, 0xa679438e, 0x49b40821, 0xf61e2562, 0xc040b340,
    0x265e5a51, 0xe9b6c7aa, 0xd62f105d, 0x02441453, 0xd8a1e681, 0xe7d3fbc8, 0x21e1cde6, 0xc33707d6, 0xf4d50d87,
    0x455a14ed, 0xa9e3e905, 0xfcefa3f8, 0x676f02d9, 0x8d2a4c8a, 0xfffa3942, 0x8771f681, 0x6d9d6122, 0xfde5380c,
    0xa4beea44, 0x4bdecfa9, 0xf6bb4b60, 0xbebfbc70, 0x289b7ec6, 0xeaa127fa, 0xd4ef3085, 0x04881d05, 0xd9d4d039,
    0xe6db99e5, 0x1fa27cf8, 0xc4ac5665, 0xf4292244, 0x432aff97, 0xab9423a7, 0xfc93a039, 0x655b59c3, 0x8f0ccc92,
    0xffeff47d, 0x85845dd1, 0x6fa87e4f, 0xfe2ce6e0, 0xa3014314, 0x4e0811a1, 0xf7537e82, 0xbd3af235, 0x2ad7d2bb,
    0xeb86d391,
];

/// The rotation of each step, by round.
const S: [[u32; 4]; 4] = [[7, 12, 17, 22], [5, 9, 14, 20], [4, 11, 16, 23], [6, 10, 15, 21]];

/// The state md5 starts from.
const INIT: [u32; 4] = [0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476];

/// One block of each of `L` lanes: `words[j][lane]` is word `j` of that lane's block.
type Words<const L: usize> = [[u32; L]; 16];

/// Applies one md5 block to each lane's state (`state[i][lane]`: word `i` of its state): the
/// rounds as the standard states them, which [`compress_avx512`] must match (the tests hold
/// it to this), and what finishes a message left alone in the lanes.
#[inline(always)]
fn compress<const L: usize>(state: &mut [[u32; L]; 4], words: &Words<L>) {
    let [mut a, mut b, mut c, mut d] = *state;
    for i in 0..64 {
        let round = i / 16;
        let g = match round {
            0 => i,
            1 => (5 * i + 1) % 16,
            2 => (3 * i + 5) % 16,
            _ => (7 * i) % 16,
        };
        let s = S[round][i % 4];
        let m = &words[g];
        let mut next = [0u32; L];
        for l in 0..L {
            let f = match round {
                0 => (b[l] & c[l]) | (!b[l] & d[l]),
                1 => (b[l] & d[l]) | (c[l] & !d[l]),
                2 => b[l] ^ c[l] ^ d[l],
                _ => c[l] ^ (b[l] | !d[l]),
            };
            let sum = a[l].wrapping_add(f).wrapping_add(K[i]).wrapping_add(m[l]);
            next[l] = b[l].wrapping_add(sum.rotate_left(s));
        }
        a = d;
        d = c;
        c = b;
        b = next;
    }
    for l in 0..L {
        state[0][l] = state[0][l].wrapping_add(a[l]);
        state[1][l] = state[1][l].wrapping_add(b[l]);
        state[2][l] = state[2][l].wrapping_add(c[l]);
        state[3][l] = state[3][l].wrapping_add(d[l]);
    }
}

/// [`compress`] for sixteen lanes in AVX-512 registers: each round's function is one
/// three-input logic instruction and each rotation one instruction, which the compiler does
/// not find on its own.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn compress_avx512(state: &mut [[u32; 16]; 4], words: &Words<16>) {
    use std::arch::x86_64::*;
    // SAFETY: every load and store is of a whole [u32; 16], 64 bytes, which unaligned loads
    // and stores of 512 bits read and write exactly.
    let load = |w: &[u32; 16]| unsafe { _mm512_loadu_si512(w.as_ptr().cast()) };
    let m: [__m512i; 16] = std::array::from_fn(|j| load(&words[j]));
    let (mut a, mut b, mut c, mut d) = (load(&state[0]), load(&state[1]), load(&state[2]), load(&state[3]));
    let (a0, b0, c0, d0) = (a, b, c, d);
    macro_rules! step {
        ($logic:expr, $a:ident, $b:ident, $c:ident, $d:ident, $g:expr, $i:expr, $s:expr) => {
            let f = _mm512_ternarylogic_epi32::<$logic>($b, $c, $d);
            let t = _mm512_add_epi32(_mm512_add_epi32($a, f), _mm512_add_epi32(_mm512_set1_epi32(K[$i] as i32), m[$g]));
            $a = _mm512_add_epi32($b, _mm512_rol_epi32::<$s>(t));
        };
    }
    step!(0xCA, a, b, c, d, 0, 0, 7);
    step!(0xCA, d, a, b, c, 1, 1, 12);
    step!(0xCA, c, d, a, b, 2, 2, 17);
    step!(0xCA, b, c, d, a, 3, 3, 22);
    step!(0xCA, a, b, c, d, 4, 4, 7);
    step!(0xCA, d, a, b, c, 5, 5, 12);
    step!(0xCA, c, d, a, b, 6, 6, 17);
    step!(0xCA, b, c, d, a, 7, 7, 22);
    step!(0xCA, a, b, c, d, 8, 8, 7);
    step!(0xCA, d, a, b, c, 9, 9, 12);
    step!(0xCA, c, d, a, b, 10, 10, 17);
    step!(0xCA, b, c, d, a, 11, 11, 22);
    step!(0xCA, a, b, c, d, 12, 12, 7);
    step!(0xCA, d, a, b, c, 13, 13, 12);
    step!(0xCA, c, d, a, b, 14, 14, 17);
    step!(0xCA, b, c, d, a, 15, 15, 22);
    step!(0xE4, a, b, c, d, 1, 16, 5);
    step!(0xE4, d, a, b, c, 6, 17, 9);
    step!(0xE4, c, d, a, b, 11, 18, 14);
    step!(0xE4, b, c, d, a, 0, 19, 20);
    step!(0xE4, a, b, c, d, 5, 20, 5);
    step!(0xE4, d, a, b, c, 10, 21, 9);
    step!(0xE4, c, d, a, b, 15, 22, 14);
    step!(0xE4, b, c, d, a, 4, 23, 20);
    step!(0xE4, a, b, c, d, 9, 24, 5);
    step!(0xE4, d, a, b, c, 14, 25, 9);
    step!(0xE4, c, d, a, b, 3, 26, 14);
    step!(0xE4, b, c, d, a, 8, 27, 20);
    step!(0xE4, a, b, c, d, 13, 28, 5);
    step!(0xE4, d, a, b, c, 2, 29, 9);
    step!(0xE4, c, d, a, b, 7, 30, 14);
    step!(0xE4, b, c, d, a, 12, 31, 20);
    step!(0x96, a, b, c, d, 5, 32, 4);
    step!(0x96, d, a, b, c, 8, 33, 11);
    step!(0x96, c, d, a, b, 11, 34, 16);
    step!(0x96, b, c, d, a, 14, 35, 23);
    step!(0x96, a, b, c, d, 1, 36, 4);
    step!(0x96, d, a, b, c, 4, 37, 11);
    step!(0x96, c, d, a, b, 7, 38, 16);
    step!(0x96, b, c, d, a, 10, 39, 23);
    step!(0x96, a, b, c, d, 13, 40, 4);
    step!(0x96, d, a, b, c, 0, 41, 11);
    step!(0x96, c, d, a, b, 3, 42, 16);
    step!(0x96, b, c, d, a, 6, 43, 23);
    step!(0x96, a, b, c, d, 9, 44, 4);
    step!(0x96, d, a, b, c, 12, 45, 11);
    step!(0x96, c, d, a, b, 15, 46, 16);
    step!(0x96, b, c, d, a, 2, 47, 23);
    step!(0x39, a, b, c, d, 0, 48, 6);
    step!(0x39, d, a, b, c, 7, 49, 10);
    step!(0x39, c, d, a, b, 14, 50, 15);
    step!(0x39, b, c, d, a, 5, 51, 21);
    step!(0x39, a, b, c, d, 12, 52, 6);
    step!(0x39, d, a, b, c, 3, 53, 10);
    step!(0x39, c, d, a, b, 10, 54, 15);
    step!(0x39, b, c, d, a, 1, 55, 21);
    step!(0x39, a, b, c, d, 8, 56, 6);
    step!(0x39, d, a, b, c, 15, 57, 10);
    step!(0x39, c, d, a, b, 6, 58, 15);
    step!(0x39, b, c, d, a, 13, 59, 21);
    step!(0x39, a, b, c, d, 4, 60, 6);
    step!(0x39, d, a, b, c, 11, 61, 10);
    step!(0x39, c, d, a, b, 2, 62, 15);
    step!(0x39, b, c, d, a, 9, 63, 21);
    let sums = [_mm512_add_epi32(a, a0), _mm512_add_epi32(b, b0), _mm512_add_epi32(c, c0), _mm512_add_epi32(d, d0)];
    for (out, sum) in state.iter_mut().zip(sums) {
        // SAFETY: as above.
        unsafe { _mm512_storeu_si512(out.as_mut_ptr().cast(), sum) };
    }
}

/// How many lanes this machine hashes at once (1: one message after another).
pub fn lanes() -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return 16;
        }
    }
    1
}

/// One message in a lane: its whole blocks, then the one or two blocks its padding makes.
struct Message<'a> {
    index: usize,
    body: &'a [u8],
    tail: [u8; 2 * BLOCK],
    tail_blocks: usize,
    /// Blocks done so far.
    at: usize,
}

impl<'a> Message<'a> {
    fn new(index: usize, data: &'a [u8]) -> Self {
        let whole = data.len() / BLOCK * BLOCK;
        let rest = &data[whole..];
        let mut tail = [0u8; 2 * BLOCK];
        tail[..rest.len()].copy_from_slice(rest);
        tail[rest.len()] = 0x80;
        let tail_blocks = if rest.len() + 9 <= BLOCK { 1 } else { 2 };
        let end = tail_blocks * BLOCK;
        tail[end - 8..end].copy_from_slice(&((data.len() as u64).wrapping_mul(8)).to_le_bytes());
        Message { index, body: &data[..whole], tail, tail_blocks, at: 0 }
    }

    fn blocks(&self) -> usize {
        self.body.len() / BLOCK + self.tail_blocks
    }

    fn block(&self, n: usize) -> &[u8] {
        let whole = self.body.len() / BLOCK;
        if n < whole {
            &self.body[n * BLOCK..(n + 1) * BLOCK]
        } else {
            &self.tail[(n - whole) * BLOCK..(n - whole + 1) * BLOCK]
        }
    }
}

fn digest(state: [u32; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (i, w) in state.iter().enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
    }
    out
}

/// The md5 of each message, hashed `L` at a time with `step`; a message left alone in the
/// lanes is finished one block after another.
fn hash_in_lanes<const L: usize>(
    messages: &[&[u8]],
    out: &mut [[u8; 16]],
    step: impl Fn(&mut [[u32; L]; 4], &Words<L>),
) {
    let mut waiting = messages.iter().enumerate().map(|(i, m)| Message::new(i, m));
    let mut lanes: [Option<Message>; L] = std::array::from_fn(|_| waiting.next());
    let mut state = [[0u32; L]; 4];
    for (l, lane) in lanes.iter().enumerate() {
        if lane.is_some() {
            for (i, w) in INIT.iter().enumerate() {
                state[i][l] = *w;
            }
        }
    }
    let mut words: Words<L> = [[0u32; L]; 16];
    // With few lanes busy, one message after another is faster than idle lanes.
    while lanes.iter().filter(|l| l.is_some()).count() > L / 4 {
        for (l, lane) in lanes.iter().enumerate() {
            if let Some(m) = lane {
                let block = m.block(m.at);
                for (j, word) in block.chunks_exact(4).enumerate() {
                    words[j][l] = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
                }
            }
        }
        step(&mut state, &words);
        for (l, lane) in lanes.iter_mut().enumerate() {
            let Some(m) = lane else { continue };
            m.at += 1;
            if m.at < m.blocks() {
                continue;
            }
            out[m.index] = digest([state[0][l], state[1][l], state[2][l], state[3][l]]);
            *lane = waiting.next();
            if lane.is_some() {
                for (i, w) in INIT.iter().enumerate() {
                    state[i][l] = *w;
                }
            }
        }
    }
    // What is left, one lane at a time from where it stands.
    for (l, lane) in lanes.iter().enumerate() {
        if let Some(m) = lane {
            let mut one = [[state[0][l]], [state[1][l]], [state[2][l]], [state[3][l]]];
            finish_one(m, &mut one);
            out[m.index] = digest([one[0][0], one[1][0], one[2][0], one[3][0]]);
        }
    }
    for m in waiting {
        let mut one = [[INIT[0]], [INIT[1]], [INIT[2]], [INIT[3]]];
        finish_one(&m, &mut one);
        out[m.index] = digest([one[0][0], one[1][0], one[2][0], one[3][0]]);
    }
}

/// Runs the rest of `m`'s blocks through `state`, one lane.
fn finish_one(m: &Message, state: &mut [[u32; 1]; 4]) {
    let mut words: Words<1> = [[0u32; 1]; 16];
    for n in m.at..m.blocks() {
        for (j, word) in m.block(n).chunks_exact(4).enumerate() {
            words[j][0] = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
        }
        compress::<1>(state, &words);
    }
}

/// The md5 of each of `messages`, in order, as many at once as the machine has lanes for.
pub fn md5_many(messages: &[&[u8]]) -> Vec<[u8; 16]> {
    let mut out = vec![[0u8; 16]; messages.len()];
    match lanes() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX-512 F (checked by `lanes`).
        16 => hash_in_lanes::<16>(messages, &mut out, |s, w| unsafe { compress_avx512(s, w) }),
        // Without wide lanes, one message after another, as the md5 crate does it.
        _ => {
            use md5::Digest;
            for (o, m) in out.iter_mut().zip(messages) {
                *o = md5::Md5::digest(m).into();
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use md5::Digest;

    fn reference(data: &[u8]) -> [u8; 16] {
        md5::Md5::digest(data).into()
    }

    fn data(len: usize, seed: u32) -> Vec<u8> {
        (0..len as u32).map(|i| (i.wrapping_mul(2654435761).wrapping_add(seed) >> 13) as u8).collect()
    }

    #[test]
    fn known_digests() {
        let got = md5_many(&[b"", b"hello world", b"The quick brown fox jumps over the lazy dog"]);
        let hex: Vec<String> = got.iter().map(hex::encode).collect();
        assert_eq!(
            hex,
            [
                "d41d8cd98f00b204e9800998ecf8427e",
                "5eb63bbbe01eeed093cb22bb8f5acdc3",
                "9e107d9d372bb6826bd81d3542a419d6"
            ]
        );
    }

    #[test]
    fn every_length_around_the_padding_edges_in_every_lane_width() {
        // Lengths that end a message just before, at and after each padding boundary, in
        // batches bigger and smaller than the lanes, unequal so that lanes refill.
        let lens: Vec<usize> = (0..200).chain([447, 448, 511, 512, 513, 4096, 10240, 100_000]).collect();
        let msgs: Vec<Vec<u8>> = lens.iter().enumerate().map(|(i, &n)| data(n, i as u32)).collect();
        let refs: Vec<&[u8]> = msgs.iter().map(|m| m.as_slice()).collect();
        let want: Vec<[u8; 16]> = refs.iter().map(|m| reference(m)).collect();
        assert_eq!(md5_many(&refs), want, "on this machine's lanes ({})", lanes());
        for take in [1, 3, 7, 8, 9, 17, refs.len()] {
            let mut out = vec![[0u8; 16]; take];
            hash_in_lanes::<1>(&refs[..take], &mut out, compress::<1>);
            assert_eq!(out, want[..take], "one lane, {take} messages");
            let mut out = vec![[0u8; 16]; take];
            hash_in_lanes::<16>(&refs[..take], &mut out, compress::<16>);
            assert_eq!(out, want[..take], "sixteen lanes, {take} messages");
            #[cfg(target_arch = "x86_64")]
            if lanes() == 16 {
                let mut out = vec![[0u8; 16]; take];
                // SAFETY: the CPU has AVX-512 F.
                hash_in_lanes::<16>(&refs[..take], &mut out, |s, w| unsafe { compress_avx512(s, w) });
                assert_eq!(out, want[..take], "sixteen AVX-512 lanes, {take} messages");
            }
        }
    }
}
