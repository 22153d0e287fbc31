//! Command-line arguments and environment variables, as given to `kiln run`.
//!
//! The strings live in memory the tender keeps mapped for the whole run, so
//! they are handed out as `&'static str` without copying.

use crate::boot;

/// The command-line arguments; the first one is the image name.
///
/// ```ignore
/// for (i, arg) in kiln_rt::env::args().enumerate() {
///     kiln_rt::println!("arg[{i}] = {arg}");
/// }
/// ```
pub fn args() -> Args {
    Args { next: 0 }
}

/// Iterator returned by [`args`].
#[derive(Clone, Debug)]
pub struct Args {
    next: u64,
}

impl Iterator for Args {
    type Item = &'static str;

    fn next(&mut self) -> Option<&'static str> {
        let info = boot::info()?;
        let arg = boot::str_at(info.argv, info.argc, self.next)?;
        self.next += 1;
        Some(arg)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = boot::info().map_or(0, |b| b.argc.saturating_sub(self.next) as usize);
        (left, Some(left))
    }
}

impl ExactSizeIterator for Args {}

/// The value of environment variable `key`, if set. When a key is given
/// several times, the first one wins.
pub fn var(key: &str) -> Option<&'static str> {
    vars().find(|&(k, _)| k == key).map(|(_, v)| v)
}

/// All environment variables as `(key, value)` pairs, in the order given.
pub fn vars() -> Vars {
    Vars { next: 0 }
}

/// Iterator returned by [`vars`].
#[derive(Clone, Debug)]
pub struct Vars {
    next: u64,
}

impl Iterator for Vars {
    type Item = (&'static str, &'static str);

    fn next(&mut self) -> Option<Self::Item> {
        let info = boot::info()?;
        let entry = boot::str_at(info.envp, info.envc, self.next)?;
        self.next += 1;
        Some(split_entry(entry))
    }
}

/// Splits `KEY=VALUE` at the first `=`; an entry without one is a key with
/// an empty value.
fn split_entry(entry: &str) -> (&str, &str) {
    entry.split_once('=').unwrap_or((entry, ""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_split_at_the_first_equals_sign() {
        assert_eq!(split_entry("A=b"), ("A", "b"));
        assert_eq!(split_entry("A=b=c"), ("A", "b=c"));
        assert_eq!(split_entry("A="), ("A", ""));
        assert_eq!(split_entry("A"), ("A", ""));
    }

    #[test]
    fn without_boot_info_there_are_no_args_or_vars() {
        assert_eq!(args().count(), 0);
        assert_eq!(vars().count(), 0);
        assert_eq!(var("PATH"), None);
    }
}
