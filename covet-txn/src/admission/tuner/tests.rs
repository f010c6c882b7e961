//! The tuner's rules, on simulated attempts: a clock moved by hand and
//! yields chosen per limit, with seeded noise.

use super::*;

/// Ends `count` attempts of which `conflicts` conflicted, spread evenly
/// over `each` apiece; the limit after the last.
fn run(tuner: &mut Tuner, clock: &mut Instant, count: u32, conflicts: u32, each: Duration) -> u32 {
    for n in 0..count {
        tuner.attempt_started(*clock);
        *clock += each;
        tuner.attempt_finished(Some(n < conflicts), each, *clock);
    }
    tuner.limit()
}

#[test]
fn without_conflicts_the_limit_stays_at_the_ceiling() {
    let mut clock = Instant::now();
    let mut tuner = Tuner::new(8, clock);
    assert_eq!(
        run(&mut tuner, &mut clock, 10_000, 0, Duration::from_millis(1)),
        8
    );
}

#[test]
fn a_lower_limit_that_yields_more_becomes_home() {
    let mut clock = Instant::now();
    let mut tuner = Tuner::new(8, clock);
    // One attempt in 4 conflicts; at 2 or fewer at once, attempts end
    // twice as often.
    for n in 0..10_000 {
        let each = if tuner.limit() <= 2 { 1 } else { 2 };
        run(
            &mut tuner,
            &mut clock,
            1,
            u32::from(n % 4 == 0),
            Duration::from_millis(each),
        );
    }
    assert!(tuner.home <= 2, "home {}", tuner.home);
}

#[test]
fn a_limit_that_measured_worse_is_tried_again_only_once_its_yield_is_stale() {
    let mut clock = Instant::now();
    let mut tuner = Tuner::new(8, clock);
    tuner.home = 1;
    tuner.current = 1;
    let mut trial_windows = 0;
    // About 100 s of attempts: at 2 or more at once, they stall; once 2
    // has, nothing higher is tried either.
    for _ in 0..6_000 {
        let each = if tuner.limit() > 1 { 50 } else { 1 };
        run(&mut tuner, &mut clock, 16, 0, Duration::from_millis(each));
        if tuner.limit() > 1 {
            trial_windows += 1;
        }
    }
    assert_eq!(tuner.home, 1);
    assert!((2..=5).contains(&trial_windows), "{trial_windows} trials");
}

#[test]
fn rare_conflicts_never_put_a_lower_limit_on_trial() {
    let mut clock = Instant::now();
    let mut tuner = Tuner::new(8, clock);
    for n in 0..10_000 {
        let each = if tuner.limit() < 8 { 1 } else { 2 };
        let conflicts = u32::from(n % 16 == 0);
        run(
            &mut tuner,
            &mut clock,
            1,
            conflicts,
            Duration::from_millis(each),
        );
        assert_eq!(tuner.limit(), 8);
    }
}

#[test]
fn a_window_mostly_lost_to_conflicts_tries_one_at_a_time_next() {
    let mut clock = Instant::now();
    let mut tuner = Tuner::new(8, clock);
    // Above 1, three attempts in four conflict after a long wait.
    let mut windows = 0;
    while tuner.home != 1 && windows < 4 {
        if tuner.limit() == 1 {
            run(&mut tuner, &mut clock, 16, 0, Duration::from_millis(1));
        } else {
            run(&mut tuner, &mut clock, 24, 24, Duration::from_millis(20));
            run(&mut tuner, &mut clock, 8, 0, Duration::from_millis(1));
        }
        windows += 1;
    }
    assert_eq!(tuner.home, 1, "after {windows} windows");
    assert_eq!(windows, 2);
}

#[test]
fn a_trial_is_judged_on_all_its_windows_not_its_first() {
    let mut clock = Instant::now();
    let mut tuner = Tuner::new(8, clock);
    tuner.home = 3;
    tuner.current = 3;
    run(&mut tuner, &mut clock, 16, 0, Duration::from_millis(1));
    tuner.current = 4;
    // An unlucky first window, 10 % slower than home…
    run(&mut tuner, &mut clock, 16, 0, Duration::from_micros(1_100));
    assert_eq!(tuner.limit(), 4, "judged on one window");
    // …then windows 30 % faster.
    for _ in 1..TRIAL_WINDOWS {
        run(&mut tuner, &mut clock, 16, 0, Duration::from_micros(770));
    }
    assert_eq!(tuner.home, 4);
}

#[test]
fn a_stall_at_home_sends_the_limit_back_to_one_that_measured_better() {
    let mut clock = Instant::now();
    let mut tuner = Tuner::new(2, clock);
    // 1 measured 1 attempt per ms, then 2 measured faster and is home…
    tuner.current = 1;
    run(&mut tuner, &mut clock, 16, 0, Duration::from_millis(1));
    tuner.current = 2;
    for _ in 0..TRIAL_WINDOWS {
        run(&mut tuner, &mut clock, 16, 4, Duration::from_micros(500));
    }
    assert_eq!((tuner.home, tuner.limit()), (2, 2));
    tuner.countdown = MAX_TRIAL_SPACING;
    // …until a stall, after which 1 goes on trial at once, long before
    // the next trial was due.
    run(&mut tuner, &mut clock, 16, 4, Duration::from_millis(100));
    assert_eq!(tuner.limit(), 1);
}

/// The mean of what each window yielded, over 10 runs of 2,000 windows
/// with ±20 % noise, when limit `n` yields `yields[n - 1]`.
fn mean_yield(yields: [f64; 8]) -> f64 {
    let mut total = 0.0;
    let mut windows = 0.0;
    for seed in 1..=10 {
        let mut clock = Instant::now();
        let mut tuner = Tuner::new(8, clock);
        let mut jitter = fastrand::Rng::with_seed(seed);
        for _ in 0..2_000 {
            let yielded = yields[tuner.limit() as usize - 1];
            let micros = (800 + jitter.u64(0..=400)) as f64 / yielded;
            let each = Duration::from_secs_f64(micros / 1e6);
            run(&mut tuner, &mut clock, 32, 4, each);
            total += yielded;
            windows += 1.0;
        }
    }
    total / windows
}

#[test]
fn the_tuner_yields_near_the_best_limit_through_the_noise() {
    // Measured: 0.984 under plain "more wins", 0.998 as it is.
    let fewer_gains_nothing = [0.85, 0.88, 0.91, 0.93, 0.95, 0.96, 0.98, 1.0];
    let yielded = mean_yield(fewer_gains_nothing);
    assert!(yielded > 0.995, "{yielded}");
    // A few per cent a step down to 3 (the shape of the contended
    // benchmark's MariaDB 10 × 8 cell at fixed limits). Measured: 1.086
    // under plain "more wins", 0.952 with a 1.1 margin at every step,
    // 1.091 with ties even below the ceiling, 1.122 as it is.
    let fewer_gains_a_little = [0.72, 1.05, 1.13, 1.10, 1.05, 1.01, 0.95, 0.89];
    let yielded = mean_yield(fewer_gains_a_little);
    assert!(yielded > 1.1, "{yielded}");
    let fewer_gains_a_fifth = [1.2, 1.2, 1.2, 1.2, 1.2, 1.2, 1.0, 1.0];
    let yielded = mean_yield(fewer_gains_a_fifth);
    assert!(yielded > 1.18, "{yielded}");
}

#[test]
fn leaving_the_ceiling_takes_a_clear_gain_and_below_it_ties_go_lower() {
    assert!(!outyields(6, 1.09, 8, 1.0, 8));
    assert!(outyields(6, 1.11, 8, 1.0, 8));
    assert!(outyields(8, 0.91, 6, 1.0, 8));
    assert!(outyields(4, 0.98, 5, 1.0, 8));
    assert!(!outyields(4, 0.96, 5, 1.0, 8));
    assert!(!outyields(5, 1.02, 4, 1.0, 8));
}

#[test]
fn lowering_takes_a_quarter_and_never_goes_below_one() {
    assert_eq!(lowered(16), 12);
    assert_eq!(lowered(8), 6);
    assert_eq!(lowered(3), 2);
    assert_eq!(lowered(1), 1);
}
