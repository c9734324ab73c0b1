//! The in-memory search index of one namespace: unit vectors, cosine similarity = dot product.
//!
//! Small namespaces are searched exhaustively. Past `exact_search_max` entries a scan of every
//! 768-dimension vector (3 KB each) costs milliseconds, so the search first ranks entries by the
//! Hamming distance of their sign bits (one bit per dimension, 96 bytes per entry: the angle
//! between two vectors is estimated by the fraction of signs that differ) and re-ranks the
//! `rerank` closest exactly. The answer is always an exact similarity of a real entry; the
//! prefilter can only miss the best entry, which BENCHMARKS.md measures against exact search
//! (recall@1). Near-duplicates, what a semantic cache hits on, differ in few signs and are
//! never close to the cut.
//!
//! Signs assume embeddings spread around the origin (as text embedding models produce); a
//! namespace of vectors that share most signs loses the prefilter's selectivity, not
//! correctness, and is best kept under `exact_search_max`.

use std::collections::{BinaryHeap, HashMap};

/// Bytes an entry costs beyond its vector and sign bits (id, slot map).
const ENTRY_OVERHEAD: usize = 48;

/// One namespace's vectors.
#[derive(Debug, Clone)]
pub struct VectorIndex {
    dimension: usize,
    words: usize,
    ids: Vec<u64>,
    vectors: Vec<f32>,
    bits: Vec<u64>,
    slots: HashMap<u64, usize>,
}

/// How to search.
#[derive(Debug, Clone, Copy)]
pub struct SearchPlan {
    /// Up to this many entries: exact scan.
    pub exact_max: usize,
    /// Candidates the prefilter keeps for the exact re-rank.
    pub rerank: usize,
}

impl VectorIndex {
    /// An empty index of `dimension`-long vectors.
    pub fn new(dimension: usize) -> Self {
        Self {
            dimension,
            words: dimension.div_ceil(64),
            ids: Vec::new(),
            vectors: Vec::new(),
            bits: Vec::new(),
            slots: HashMap::new(),
        }
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Approximate bytes held.
    pub fn bytes(&self) -> usize {
        self.len() * (self.dimension * 4 + self.words * 8 + ENTRY_OVERHEAD)
    }

    /// Whether `id` is held.
    pub fn contains(&self, id: u64) -> bool {
        self.slots.contains_key(&id)
    }

    /// Adds or replaces `id` with `vector` (a unit vector of the index's dimension; a vector of
    /// another length is ignored: it cannot come from a validated Set).
    pub fn upsert(&mut self, id: u64, vector: &[f32]) {
        if vector.len() != self.dimension {
            return;
        }
        let signs = signs(vector, self.words);
        if let Some(&slot) = self.slots.get(&id) {
            self.vectors[slot * self.dimension..(slot + 1) * self.dimension]
                .copy_from_slice(vector);
            self.bits[slot * self.words..(slot + 1) * self.words].copy_from_slice(&signs);
            return;
        }
        self.slots.insert(id, self.ids.len());
        self.ids.push(id);
        self.vectors.extend_from_slice(vector);
        self.bits.extend_from_slice(&signs);
    }

    /// Removes `id`; whether it was held. The last entry moves into its place (O(1)).
    pub fn remove(&mut self, id: u64) -> bool {
        let Some(slot) = self.slots.remove(&id) else {
            return false;
        };
        let last = self.ids.len() - 1;
        if slot != last {
            let moved = self.ids[last];
            self.ids[slot] = moved;
            self.slots.insert(moved, slot);
            let d = self.dimension;
            self.vectors.copy_within(last * d..(last + 1) * d, slot * d);
            let w = self.words;
            self.bits.copy_within(last * w..(last + 1) * w, slot * w);
        }
        self.ids.pop();
        self.vectors.truncate(last * self.dimension);
        self.bits.truncate(last * self.words);
        true
    }

    /// Up to `k` entries with similarity ≥ `min_similarity` to `query` (a unit vector), most
    /// similar first.
    pub fn search(
        &self,
        query: &[f32],
        min_similarity: f32,
        k: usize,
        plan: SearchPlan,
    ) -> Vec<(u64, f32)> {
        if query.len() != self.dimension || k == 0 {
            return Vec::new();
        }
        let mut found: Vec<(u64, f32)> = if self.len() <= plan.exact_max.max(plan.rerank) {
            (0..self.len())
                .map(|slot| (self.ids[slot], dot(self.vector(slot), query)))
                .filter(|(_, s)| *s >= min_similarity)
                .collect()
        } else {
            self.prefilter(query, plan.rerank)
                .into_iter()
                .map(|slot| (self.ids[slot], dot(self.vector(slot), query)))
                .filter(|(_, s)| *s >= min_similarity)
                .collect()
        };
        found.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
        found.truncate(k);
        found
    }

    /// The exact answer (every entry scored): what [`search`](Self::search)'s recall is
    /// measured against.
    pub fn search_exact(&self, query: &[f32], min_similarity: f32, k: usize) -> Vec<(u64, f32)> {
        self.search(
            query,
            min_similarity,
            k,
            SearchPlan {
                exact_max: usize::MAX,
                rerank: 1,
            },
        )
    }

    fn vector(&self, slot: usize) -> &[f32] {
        &self.vectors[slot * self.dimension..(slot + 1) * self.dimension]
    }

    /// The slots of the `keep` entries whose signs differ least from the query's.
    fn prefilter(&self, query: &[f32], keep: usize) -> Vec<usize> {
        let q = signs(query, self.words);
        // A max-heap of the best `keep` so far: an entry farther than its top is skipped after
        // one comparison.
        let mut best: BinaryHeap<(u32, usize)> = BinaryHeap::with_capacity(keep + 1);
        let mut worst = u32::MAX;
        for (slot, bits) in self.bits.chunks_exact(self.words).enumerate() {
            let d: u32 = bits.iter().zip(&q).map(|(a, b)| (a ^ b).count_ones()).sum();
            if best.len() < keep {
                best.push((d, slot));
                if best.len() == keep {
                    worst = best.peek().map_or(u32::MAX, |t| t.0);
                }
            } else if d < worst {
                best.pop();
                best.push((d, slot));
                worst = best.peek().map_or(u32::MAX, |t| t.0);
            }
        }
        let mut slots: Vec<(u32, usize)> = best.into_vec();
        slots.sort_unstable();
        slots.into_iter().map(|(_, slot)| slot).collect()
    }
}

/// The sign bits of `v` (bit set: component > 0), `words` 64-bit words.
fn signs(v: &[f32], words: usize) -> Vec<u64> {
    let mut out = vec![0u64; words];
    for (i, x) in v.iter().enumerate() {
        if *x > 0.0 {
            out[i / 64] |= 1 << (i % 64);
        }
    }
    out
}

/// The dot product, in eight independent lanes (so the compiler can keep them in SIMD
/// registers; a single running sum would be one long dependency chain).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            lanes[i] += x[i] * y[i];
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    lanes.iter().sum::<f32>() + tail
}

/// `v` scaled to unit length, or `None` when it has no direction (all zero) or is not finite.
pub fn normalize(v: &[f32]) -> Option<Vec<f32>> {
    if v.iter().any(|x| !x.is_finite()) {
        return None;
    }
    let norm = v
        .iter()
        .map(|x| f64::from(*x) * f64::from(*x))
        .sum::<f64>()
        .sqrt();
    if norm == 0.0 || !norm.is_finite() {
        return None;
    }
    #[allow(clippy::cast_possible_truncation)]
    Some(v.iter().map(|x| (f64::from(*x) / norm) as f32).collect())
}

/// A vector as stored in Redis: little-endian f32s.
pub fn to_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A vector read back from Redis; `None` if the bytes are not whole f32s.
pub fn from_bytes(b: &[u8]) -> Option<Vec<f32>> {
    if !b.len().is_multiple_of(4) {
        return None;
    }
    Some(
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    )
}

/// Synthetic embeddings for tests and benchmarks: what the recall figures and the contract
/// tests are measured on (flowstate ships no model, so no real embeddings).
#[doc(hidden)]
pub mod synthetic {
    use rand::Rng;

    use super::normalize;

    /// A uniformly random direction of `d` dimensions, as a unit vector.
    pub fn random_unit(rng: &mut impl Rng, d: usize) -> Vec<f32> {
        loop {
            let v: Vec<f32> = (0..d).map(|_| rng.random::<f32>() - 0.5).collect();
            if let Some(unit) = normalize(&v) {
                return unit;
            }
        }
    }

    /// `v` plus uniform noise of `ratio` times a component's typical size, as a unit vector:
    /// cosine to `v` ≈ 1/√(1+ratio²) (0.1 → 0.995, a rephrased prompt; 0.48 → 0.90).
    pub fn noisy(rng: &mut impl Rng, v: &[f32], ratio: f32) -> Vec<f32> {
        let amplitude = ratio * 12f32.sqrt() / (v.len() as f32).sqrt();
        let n: Vec<f32> = v
            .iter()
            .map(|x| x + (rng.random::<f32>() - 0.5) * amplitude)
            .collect();
        normalize(&n).unwrap_or_else(|| v.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use rand::{SeedableRng, rngs::StdRng};

    use super::{
        synthetic::{noisy, random_unit},
        *,
    };

    #[test]
    fn upsert_remove_and_search_agree_with_a_plain_scan() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut index = VectorIndex::new(70);
        let mut kept: HashMap<u64, Vec<f32>> = HashMap::new();
        for id in 0..300u64 {
            let v = random_unit(&mut rng, 70);
            index.upsert(id, &v);
            kept.insert(id, v);
        }
        for id in (0..300u64).step_by(3) {
            assert!(index.remove(id));
            kept.remove(&id);
        }
        assert!(!index.remove(0), "removed twice");
        let v = random_unit(&mut rng, 70);
        index.upsert(1, &v);
        kept.insert(1, v);
        assert_eq!(index.len(), kept.len());
        for _ in 0..20 {
            let q = random_unit(&mut rng, 70);
            let got = index.search_exact(&q, -1.0, 5);
            let mut want: Vec<(u64, f32)> = kept.iter().map(|(id, v)| (*id, dot(v, &q))).collect();
            want.sort_by(|a, b| b.1.total_cmp(&a.1));
            want.truncate(5);
            assert_eq!(
                got.iter().map(|g| g.0).collect::<Vec<_>>(),
                want.iter().map(|w| w.0).collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn the_prefilter_finds_near_duplicates_and_ranks_them_exactly() {
        let mut rng = StdRng::seed_from_u64(11);
        let d = 256;
        let mut index = VectorIndex::new(d);
        let mut stored = Vec::new();
        for id in 0..5_000u64 {
            let v = random_unit(&mut rng, d);
            index.upsert(id, &v);
            stored.push(v);
        }
        let plan = SearchPlan {
            exact_max: 100,
            rerank: 32,
        };
        let mut agree = 0;
        for i in 0..200 {
            let target = (i * 23) % stored.len();
            let q = noisy(&mut rng, &stored[target], 0.4);
            let got = index.search(&q, 0.8, 1, plan);
            assert_eq!(got.first().map(|g| g.0), Some(target as u64));
            let exact = index.search_exact(&q, 0.8, 1);
            assert!(
                (got[0].1 - exact[0].1).abs() < 1e-6,
                "the similarity is exact"
            );
            agree += usize::from(got == exact);
        }
        assert_eq!(agree, 200);
        // An unrelated query is far from everything: nothing at a high threshold.
        let q = random_unit(&mut rng, d);
        assert!(index.search(&q, 0.8, 1, plan).is_empty());
    }

    #[test]
    fn vectors_round_trip_and_degenerate_ones_are_refused() {
        let v = normalize(&[3.0, 4.0]).expect("unit");
        assert!((v[0] - 0.6).abs() < 1e-6 && (v[1] - 0.8).abs() < 1e-6);
        assert_eq!(from_bytes(&to_bytes(&v)), Some(v));
        assert_eq!(normalize(&[0.0, 0.0]), None);
        assert_eq!(normalize(&[f32::NAN, 1.0]), None);
        assert_eq!(normalize(&[f32::INFINITY, 1.0]), None);
        assert_eq!(from_bytes(&[1, 2, 3]), None);
    }
}
