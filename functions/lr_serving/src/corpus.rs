//! The generated training corpus: product reviews built from templates and word lists
//! with a seeded RNG, half positive and half negative, with some label noise.

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};

const SUBJECTS: &[&str] = &[
    "movie",
    "book",
    "phone",
    "blender",
    "hotel",
    "restaurant",
    "laptop",
    "headphones",
    "camera",
    "game",
    "jacket",
    "coffee maker",
    "chair",
    "pizza",
    "app",
    "vacuum",
    "printer",
    "watch",
    "mattress",
    "backpack",
    "album",
    "show",
    "car",
    "tent",
];

const POSITIVE: &[&str] = &[
    "great",
    "excellent",
    "wonderful",
    "amazing",
    "fantastic",
    "superb",
    "lovely",
    "perfect",
    "delightful",
    "brilliant",
    "outstanding",
    "impressive",
    "reliable",
    "comfortable",
    "sturdy",
    "beautiful",
    "friendly",
    "helpful",
    "fast",
    "fresh",
    "tasty",
    "delicious",
    "clean",
    "solid",
    "enjoyable",
    "pleasant",
    "charming",
    "smooth",
    "quiet",
    "durable",
    "gorgeous",
    "awesome",
    "good",
    "nice",
    "fair",
];

const NEGATIVE: &[&str] = &[
    "terrible",
    "awful",
    "horrible",
    "poor",
    "disappointing",
    "broken",
    "useless",
    "cheap",
    "flimsy",
    "slow",
    "rude",
    "bland",
    "stale",
    "boring",
    "dirty",
    "noisy",
    "faulty",
    "overpriced",
    "mediocre",
    "unreliable",
    "uncomfortable",
    "ugly",
    "buggy",
    "defective",
    "worthless",
    "dreadful",
    "annoying",
    "fragile",
    "greasy",
    "smelly",
    "clunky",
    "lousy",
    "bad",
    "weak",
    "cold",
];

const ASPECTS: &[&str] = &[
    "acting",
    "sound",
    "battery",
    "service",
    "food",
    "plot",
    "screen",
    "staff",
    "room",
    "price",
    "delivery",
    "packaging",
    "story",
    "music",
    "fabric",
    "keyboard",
];

const INTENSIFIERS: &[&str] = &[
    "absolutely",
    "truly",
    "really",
    "very",
    "quite",
    "so",
    "extremely",
];

const LIKE: &[&str] = &[
    "love",
    "really like",
    "enjoyed",
    "adore",
    "am happy with",
    "would recommend",
    "am impressed by",
    "am glad I bought",
];

const DISLIKE: &[&str] = &[
    "hate",
    "regret buying",
    "returned",
    "am disappointed with",
    "would not recommend",
    "want a refund for",
    "am annoyed by",
    "wasted money on",
];

const POSITIVE_ENDINGS: &[&str] = &[
    "Would buy again.",
    "Highly recommended!",
    "Five stars.",
    "Worth every penny.",
    "Best purchase this year.",
    "Everyone should try it.",
    "It exceeded my expectations.",
    "Works like a charm.",
    "I would recommend it to everyone.",
];

const NEGATIVE_ENDINGS: &[&str] = &[
    "Avoid it.",
    "Complete waste of money.",
    "One star.",
    "Never again.",
    "It broke after a week.",
    "Stopped working within days.",
    "Customer service was no help.",
    "I asked for a refund.",
    "I would not recommend it to anyone.",
];

const NEUTRAL: &[&str] = &[
    "I bought it last week.",
    "It arrived on Tuesday.",
    "I got it as a gift for my sister.",
    "We used it for the whole summer.",
    "My friend told me about it.",
    "I have had it for a month now.",
    "The box was blue.",
    "I ordered it online.",
    "We tried it at the office.",
    "It came with a manual.",
];

/// One review of the corpus: its text and whether it is positive.
pub struct Review {
    pub text: String,
    pub positive: bool,
}

fn pick<'a>(rng: &mut StdRng, words: &[&'a str]) -> &'a str {
    words.choose(rng).copied().unwrap_or_default()
}

/// A review of the given polarity. A few sentences use the other polarity's words,
/// negated ("not great", "not bad at all") or not, so that single words are not
/// perfect predictors.
fn review(rng: &mut StdRng, positive: bool) -> String {
    let (good, bad) = if positive {
        (POSITIVE, NEGATIVE)
    } else {
        (NEGATIVE, POSITIVE)
    };
    let subject = pick(rng, SUBJECTS);
    let mut sentences = Vec::new();
    if rng.random_bool(0.5) {
        sentences.push(pick(rng, NEUTRAL).to_string());
    }
    let opinion = if positive {
        pick(rng, LIKE)
    } else {
        pick(rng, DISLIKE)
    };
    sentences.push(match rng.random_range(0..5) {
        0 => format!("I {opinion} this {subject}."),
        1 => format!(
            "The {subject} is {} and {}.",
            pick(rng, good),
            pick(rng, good)
        ),
        2 => format!(
            "What a {} {subject}, really {}.",
            pick(rng, good),
            pick(rng, good)
        ),
        3 => format!("This {subject} was not {} at all.", pick(rng, bad)),
        _ => format!(
            "{} quality, {} design and a {} price.",
            pick(rng, good),
            pick(rng, good),
            pick(rng, good)
        ),
    });
    for _ in 0..rng.random_range(0..3) {
        sentences.push(match rng.random_range(0..6) {
            0 => format!("It is {}.", pick(rng, good)),
            1 => format!(
                "The {} was {} {}.",
                pick(rng, ASPECTS),
                pick(rng, INTENSIFIERS),
                pick(rng, good)
            ),
            2 => format!(
                "The {} is {}, the {} {}.",
                pick(rng, ASPECTS),
                pick(rng, good),
                pick(rng, ASPECTS),
                pick(rng, good)
            ),
            3 => format!("I {opinion} it."),
            4 => format!(
                "Somewhat {} but mostly {}.",
                pick(rng, bad),
                pick(rng, good)
            ),
            _ => format!("The staff were {}.", pick(rng, good)),
        });
    }
    if rng.random_bool(0.7) {
        let endings = if positive {
            POSITIVE_ENDINGS
        } else {
            NEGATIVE_ENDINGS
        };
        sentences.push(pick(rng, endings).to_string());
    }
    sentences.join(" ")
}

/// `n` reviews from `seed`, alternating positive and negative; a fraction `noise` of
/// them carries the wrong label, as real review data does.
pub fn generate(n: usize, seed: u64, noise: f64) -> Vec<Review> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|i| {
            let positive = i % 2 == 0;
            let text = review(&mut rng, positive);
            let flipped = rng.random_bool(noise);
            Review {
                text,
                positive: positive != flipped,
            }
        })
        .collect()
}
