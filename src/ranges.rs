//! Sets of row ids as sorted, disjoint, half-open ranges `(start, end)`: what a shard covers, what is left.

pub type Range = (u64, u64);

/// Sorts and merges overlapping or touching ranges; drops empty ones.
pub fn normalize(mut v: Vec<Range>) -> Vec<Range> {
    v.retain(|&(a, b)| a < b);
    v.sort_unstable();
    let mut out: Vec<Range> = Vec::with_capacity(v.len());
    for (a, b) in v {
        match out.last_mut() {
            Some(last) if a <= last.1 => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

/// `a` minus `b` (both normalized).
pub fn subtract(a: &[Range], b: &[Range]) -> Vec<Range> {
    let mut out = Vec::new();
    let mut j = 0;
    for &(mut s, e) in a {
        while j < b.len() && b[j].1 <= s {
            j += 1;
        }
        let mut k = j;
        while k < b.len() && b[k].0 < e {
            if b[k].0 > s {
                out.push((s, b[k].0));
            }
            s = s.max(b[k].1);
            k += 1;
        }
        if s < e {
            out.push((s, e));
        }
    }
    out
}

/// Ranges of a sorted list of distinct ids.
pub fn from_sorted_ids(ids: &[u64]) -> Vec<Range> {
    let mut out: Vec<Range> = Vec::new();
    for &id in ids {
        match out.last_mut() {
            Some(last) if last.1 == id => last.1 += 1,
            _ => out.push((id, id + 1)),
        }
    }
    out
}

/// Row ids in the ranges (saturating: ranges from a damaged manifest may claim more than 2^64).
pub fn total(r: &[Range]) -> u64 {
    r.iter().fold(0u64, |t, (a, b)| t.saturating_add(b.saturating_sub(*a)))
}

pub fn contains(r: &[Range], x: u64) -> bool {
    let i = r.partition_point(|&(_, e)| e <= x);
    i < r.len() && r[i].0 <= x
}

/// Whether two normalized sets share any id.
pub fn overlaps(a: &[Range], b: &[Range]) -> bool {
    total(&subtract(a, b)) != total(a)
}

/// Every overlap among `(range, owner)` items, found in one sort (O(n log n)): for each range that starts
/// before the furthest end seen so far, `(owner of that furthest range, its owner)`. An owner whose own ranges
/// overlap is reported as a pair with itself.
pub fn overlapping_pairs<T: Copy>(mut items: Vec<(Range, T)>) -> Vec<(T, T)> {
    items.retain(|((a, b), _)| a < b);
    items.sort_unstable_by_key(|(r, _)| *r);
    let mut out = Vec::new();
    let mut reach: Option<(u64, T)> = None;
    for ((a, b), owner) in items {
        match reach {
            Some((end, other)) if a < end => {
                out.push((other, owner));
                if b > end {
                    reach = Some((b, owner));
                }
            }
            _ => reach = Some((b, owner)),
        }
    }
    out
}

/// A small deterministic generator for randomized tests: `rng(seed)(n)` is in `0..n`.
#[cfg(test)]
pub(crate) fn test_rng(mut seed: u64) -> impl FnMut(u64) -> u64 {
    move |n| {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (seed >> 33) % n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_merges_and_sorts() {
        assert_eq!(normalize(vec![(5, 7), (0, 2), (2, 3), (6, 9), (4, 4)]), vec![(0, 3), (5, 9)]);
    }

    #[test]
    fn subtract_cuts_holes() {
        assert_eq!(subtract(&[(0, 10)], &[(2, 3), (5, 7)]), vec![(0, 2), (3, 5), (7, 10)]);
        assert_eq!(subtract(&[(0, 4), (6, 10)], &[(3, 7)]), vec![(0, 3), (7, 10)]);
        assert_eq!(subtract(&[(0, 4)], &[(0, 4)]), vec![]);
        assert_eq!(subtract(&[(0, 4)], &[]), vec![(0, 4)]);
        assert_eq!(subtract(&[(5, 8)], &[(0, 1), (9, 12)]), vec![(5, 8)]);
    }

    #[test]
    fn ids_to_ranges_and_membership() {
        let r = from_sorted_ids(&[1, 2, 3, 7, 9, 10]);
        assert_eq!(r, vec![(1, 4), (7, 8), (9, 11)]);
        assert_eq!(total(&r), 6);
        assert!(contains(&r, 3) && contains(&r, 9) && !contains(&r, 4) && !contains(&r, 0) && !contains(&r, 11));
        assert!(overlaps(&r, &[(3, 5)]) && !overlaps(&r, &[(4, 7)]));
    }

    #[test]
    fn overlaps_found_in_one_sort() {
        let first = |v: Vec<(Range, char)>| overlapping_pairs(v).first().copied();
        assert_eq!(first(vec![((10, 20), 'a'), ((0, 10), 'b'), ((20, 30), 'c')]), None);
        assert_eq!(first(vec![((10, 20), 'a'), ((0, 5), 'b'), ((19, 30), 'c')]), Some(('a', 'c')));
        assert_eq!(first(vec![((0, 10), 'a'), ((5, 8), 'a')]), Some(('a', 'a')));
        assert_eq!(first(vec![((0, 0), 'a'), ((0, 10), 'b')]), None, "empty ranges hold no ids");
        // Every overlapping range is named once, against the range reaching furthest before it.
        let all = overlapping_pairs(vec![((0, 100), 'a'), ((40, 50), 'b'), ((60, 120), 'c'), ((110, 130), 'd'), ((200, 210), 'e')]);
        assert_eq!(all, vec![('a', 'b'), ('a', 'c'), ('c', 'd')]);
    }

    #[test]
    fn subtract_agrees_with_a_brute_force_set() {
        let mut rnd = test_rng(12345);
        for _ in 0..200 {
            let mk = |rnd: &mut dyn FnMut(u64) -> u64| {
                normalize(
                    (0..4)
                        .map(|_| {
                            let a = rnd(40);
                            (a, a + rnd(10))
                        })
                        .collect(),
                )
            };
            let (a, b) = (mk(&mut rnd), mk(&mut rnd));
            let got = subtract(&a, &b);
            for x in 0..60 {
                assert_eq!(contains(&got, x), contains(&a, x) && !contains(&b, x), "{a:?} - {b:?} at {x}");
            }
        }
    }
}
