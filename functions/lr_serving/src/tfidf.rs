//! TF-IDF features of unigrams and bigrams, as scikit-learn's `TfidfVectorizer` computes
//! them with `ngram_range=(1, 2)`, `min_df=2`, `max_features`, a smoothed idf and L2
//! normalized rows.

use std::collections::{BTreeMap, HashMap};

/// Lower-cased tokens of two or more alphanumeric characters (scikit-learn's default
/// token pattern), followed by the bigrams of consecutive tokens.
pub fn terms(text: &str) -> Vec<String> {
    let tokens: Vec<String> = text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|t| t.chars().count() >= 2)
        .map(str::to_lowercase)
        .collect();
    let bigrams = tokens.windows(2).map(|w| format!("{} {}", w[0], w[1]));
    let mut all = tokens.clone();
    all.extend(bigrams);
    all
}

pub struct Vectorizer {
    /// Term to column.
    index: HashMap<String, usize>,
    /// Column to its idf weight.
    idf: Vec<f32>,
}

impl Vectorizer {
    /// Learns the vocabulary and idf weights of `docs`: terms in at least `min_df`
    /// documents, the `max_features` most frequent of them (ties: alphabetical), in
    /// alphabetical order.
    pub fn fit<'a>(
        docs: impl IntoIterator<Item = &'a str>,
        min_df: usize,
        max_features: usize,
    ) -> Self {
        // term -> (documents containing it, occurrences)
        let mut stats: BTreeMap<String, (usize, usize)> = BTreeMap::new();
        let mut n_docs = 0usize;
        for doc in docs {
            n_docs += 1;
            let mut counts: BTreeMap<String, usize> = BTreeMap::new();
            for term in terms(doc) {
                *counts.entry(term).or_default() += 1;
            }
            for (term, count) in counts {
                let s = stats.entry(term).or_default();
                s.0 += 1;
                s.1 += count;
            }
        }
        let mut kept: Vec<(String, usize, usize)> = stats
            .into_iter()
            .filter(|(_, (df, _))| *df >= min_df)
            .map(|(term, (df, count))| (term, df, count))
            .collect();
        kept.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| a.0.cmp(&b.0)));
        kept.truncate(max_features);
        kept.sort_by(|a, b| a.0.cmp(&b.0));
        let n = n_docs as f32;
        let idf = kept
            .iter()
            .map(|(_, df, _)| ((1.0 + n) / (1.0 + *df as f32)).ln() + 1.0)
            .collect();
        let index = kept
            .into_iter()
            .enumerate()
            .map(|(i, (term, _, _))| (term, i))
            .collect();
        Self { index, idf }
    }

    /// Number of features (columns).
    pub fn len(&self) -> usize {
        self.idf.len()
    }

    /// The L2-normalized TF-IDF row of `text`, appended to `out`. Terms outside the
    /// vocabulary are ignored; a text without any known term gives a zero row.
    pub fn transform_into(&self, text: &str, out: &mut Vec<f32>) {
        let start = out.len();
        out.resize(start + self.len(), 0.0);
        let row = &mut out[start..];
        for term in terms(text) {
            if let Some(&i) = self.index.get(&term) {
                row[i] += self.idf[i];
            }
        }
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        if norm > 0.0 {
            row.iter_mut().for_each(|v| *v /= norm);
        }
    }

    /// Whether `term` is a feature.
    #[cfg(test)]
    pub fn contains(&self, term: &str) -> bool {
        self.index.contains_key(term)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terms_are_lowercase_unigrams_and_bigrams() {
        assert_eq!(terms("Not GOOD, a b-c!"), vec!["not", "good", "not good"]);
        assert!(terms("").is_empty());
    }

    #[test]
    fn fit_keeps_frequent_terms_and_rows_are_unit_vectors() {
        let docs = ["good movie", "bad movie", "good book", "rare"];
        let v = Vectorizer::fit(docs, 2, 100);
        assert_eq!(v.len(), 2, "only `good` and `movie` are in two documents");
        assert!(v.contains("good") && v.contains("movie") && !v.contains("rare"));
        let mut row = Vec::new();
        v.transform_into("good good movie", &mut row);
        let norm: f32 = row.iter().map(|x| x * x).sum();
        assert!((norm - 1.0).abs() < 1e-6);
        v.transform_into("nothing known", &mut row);
        assert_eq!(&row[2..], &[0.0, 0.0]);
        assert_eq!(Vectorizer::fit(docs, 1, 1).len(), 1, "max_features");
    }
}
