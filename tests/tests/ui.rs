//! Compile tests of `#[background_job]`: every accepted shape compiles
//! (`ui/pass`), and every misuse fails with the reviewed message, spanned on
//! the offending tokens (`ui/fail/*.stderr`). Regenerate with
//! `TRYBUILD=overwrite cargo test -p skiplock-tests --test ui`, then read every diff.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("ui/pass/*.rs");
    t.compile_fail("ui/fail/*.rs");
}
