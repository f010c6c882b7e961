//! Every misuse of `#[transactional]` is a compile error spanned on the
//! token to change; every supported use compiles.

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/fail/*.rs");
    cases.pass("tests/ui/pass/*.rs");
}
