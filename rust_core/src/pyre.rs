//! Python `re` syntax and semantics, translated into a regex-syntax [`Hir`].
//!
//! Trigger regexes are written for Python (`re.search(regex, query, re.IGNORECASE)` is the
//! contract), so this module parses them the way CPython's `re._parser` does (3.11 grammar)
//! and builds the HIR from Python's own character tables (`pyre_tables`, generated from `re`):
//! `\w`, `\d`, `\s`, case-insensitive matching (sre's simple lower-casing plus its extra
//! equivalences such as i/ı and s/ſ), class quirks included. What has no exact linear-time
//! equivalent is refused with the construct's name and offset:
//! look-around, backreferences (`\1`, `(?P=name)`), conditionals, possessive quantifiers,
//! atomic groups, `\N{...}`, and a `$` followed by more pattern (see [`Translated`]).

use regex_syntax::hir::{Capture, Class, ClassUnicode, ClassUnicodeRange, Hir, Look, Repetition};

use std::sync::OnceLock;

use crate::pyre_tables as tables;

/// Nesting limit: deep nesting only serves to blow the stack.
pub const NEST_LIMIT: u32 = 100;
/// Name prefix of the hidden groups that mark a `$` matched before a final newline (see [`Translated`]).
pub const DOLLAR_NEWLINE_GROUP: &str = "__tmws_dollar_newline";
const MAXREPEAT: u64 = 4_294_967_295;

/// A translated pattern.
pub struct Translated {
    /// The pattern as a HIR with capture groups. A `$` (without `re.M`) that ends the pattern
    /// becomes `(?P<__tmws_dollar_newline>\n)?\z`: Python's `$` also matches before a final
    /// `\n`, and with nothing after it consuming that newline decides the same searches.
    /// Spans must be cut back by one when that group took part.
    pub hir: Hir,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Flags {
    ignore_case: bool,
    ascii: bool,
    multiline: bool,
    dotall: bool,
    verbose: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cat {
    Digit,
    NotDigit,
    Space,
    NotSpace,
    Word,
    NotWord,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Item {
    Lit(u32),
    Range(u32, u32),
    Cat(Cat),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum At {
    Beginning,
    End,
    BeginningString,
    EndString,
    Boundary,
    NonBoundary,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Node {
    Literal(u32, Flags),
    NotLiteral(u32, Flags),
    Class(bool, Vec<Item>, Flags),
    Any(Flags),
    At(At, Flags),
    Concat(Vec<Node>),
    Alt(Vec<Node>),
    /// A group: `Some((index, name))` captures; `None` is a plain `(?:...)`, spliced into
    /// its sequence once quantifiers are applied (as `re._parser` does).
    Group(Option<(u32, Option<String>)>, Box<Node>),
    /// `(?flags:...)`: kept whole, so the alternation merge sees it as Python does.
    FlagGroup(Box<Node>),
    Repeat(u32, Option<u32>, bool, Box<Node>),
}

/// Translates `pattern` as Python compiles `re.compile(pattern, re.IGNORECASE)` if
/// `ignore_case`, else `re.compile(pattern)`.
pub fn translate(pattern: &str, ignore_case: bool) -> Result<Translated, String> {
    let mut p = Parser {
        chars: pattern.chars().collect(),
        pos: 0,
        groups: 0,
        names: Vec::new(),
        open: Vec::new(),
    };
    let flags = Flags {
        ignore_case,
        ascii: false,
        multiline: false,
        dotall: false,
        verbose: false,
    };
    let node = p.parse_sub(flags, 0)?;
    if p.pos < p.chars.len() {
        // Only a `)` stops the top level.
        return Err(format!("unbalanced parenthesis (at offset {})", p.offset()));
    }
    Ok(Translated {
        hir: renumber(&lower(&node, true)?),
    })
}

struct Parser {
    chars: Vec<char>,
    pos: usize,
    groups: u32,
    names: Vec<String>,
    open: Vec<u32>,
}

fn err(what: impl std::fmt::Display, offset: usize) -> String {
    format!("{what} (at offset {offset})")
}

const SPECIAL: &str = ".\\[{()*+?^$|";
const WHITESPACE: &str = " \t\n\r\x0b\x0c";

impl Parser {
    /// Byte offset of the current position (errors name byte offsets like the rest of tmws).
    fn offset(&self) -> usize {
        self.offset_of(self.pos)
    }

    fn offset_of(&self, pos: usize) -> usize {
        self.chars[..pos.min(self.chars.len())]
            .iter()
            .map(|c| c.len_utf8())
            .sum()
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += 1;
        Some(c)
    }

    /// `_parse_sub`: alternation, with Python's common-prefix factoring and its merging of
    /// single-character branches into one set (both change IGNORECASE set semantics).
    fn parse_sub(&mut self, mut flags: Flags, depth: u32) -> Result<Node, String> {
        if depth > NEST_LIMIT {
            return Err(err("pattern nests too deeply", self.offset()));
        }
        let mut items = Vec::new();
        loop {
            let first = depth == 0 && items.is_empty();
            let (seq, new_flags) = self.parse_seq(flags, depth, first)?;
            if first {
                // Global flags apply to the whole pattern.
                flags = new_flags;
            }
            items.push(seq);
            if !self.eat('|') {
                break;
            }
        }
        if items.len() == 1 {
            return Ok(Node::Concat(items.pop().expect("one item")));
        }
        let mut prefix = Vec::new();
        while let Some(head) = items[0].first().cloned() {
            if !items.iter().all(|it| it.first() == Some(&head)) {
                break;
            }
            for it in &mut items {
                it.remove(0);
            }
            prefix.push(head);
        }
        let mut set = Vec::new();
        let mut set_flags = None;
        let mergeable = items.iter().all(|it| {
            if it.len() != 1 {
                return false;
            }
            match &it[0] {
                Node::Literal(c, f) => {
                    set.push(Item::Lit(*c));
                    set_flags = Some(*f);
                    true
                }
                Node::Class(false, members, f) => {
                    set.extend(members.iter().copied());
                    set_flags = Some(*f);
                    true
                }
                _ => false,
            }
        });
        if mergeable {
            prefix.push(Node::Class(false, uniq(set), set_flags.unwrap_or(flags)));
        } else {
            prefix.push(Node::Alt(items.into_iter().map(Node::Concat).collect()));
        }
        Ok(Node::Concat(prefix))
    }

    /// `_parse`: one branch. Returns its items and the flags in force after it (global flags).
    fn parse_seq(
        &mut self,
        mut flags: Flags,
        depth: u32,
        first: bool,
    ) -> Result<(Vec<Node>, Flags), String> {
        let mut seq: Vec<Node> = Vec::new();
        while let Some(c) = self.peek() {
            if c == '|' || c == ')' {
                break;
            }
            let start = self.pos;
            self.pos += 1;
            if flags.verbose {
                if WHITESPACE.contains(c) {
                    continue;
                }
                if c == '#' {
                    while let Some(c) = self.next() {
                        if c == '\n' {
                            break;
                        }
                    }
                    continue;
                }
            }
            match c {
                '\\' => seq.push(self.escape(flags)?),
                c if !SPECIAL.contains(c) => seq.push(Node::Literal(c as u32, flags)),
                '[' => seq.push(self.class(flags)?),
                '*' | '+' | '?' | '{' => {
                    let (min, max) = match c {
                        '*' => (0, None),
                        '+' => (1, None),
                        '?' => (0, Some(1)),
                        _ => match self.braces()? {
                            Some(bounds) => bounds,
                            None => {
                                seq.push(Node::Literal('{' as u32, flags));
                                continue;
                            }
                        },
                    };
                    let Some(last) = seq.pop() else {
                        return Err(err("nothing to repeat", self.offset_of(start)));
                    };
                    if matches!(last, Node::At(..)) {
                        return Err(err("nothing to repeat", self.offset_of(start)));
                    }
                    if matches!(last, Node::Repeat(..)) {
                        return Err(err("multiple repeat", self.offset_of(start)));
                    }
                    let greedy = !self.eat('?');
                    if greedy && self.eat('+') {
                        return Err(err(
                            "possessive quantifiers (`*+`, `++`, `?+`, `{m,n}+`) are not \
                             supported: they discard backtracking positions, which has no \
                             linear-time equivalent",
                            self.offset_of(start),
                        ));
                    }
                    seq.push(Node::Repeat(min, max, greedy, Box::new(last)));
                }
                '.' => seq.push(Node::Any(flags)),
                '^' => seq.push(Node::At(At::Beginning, flags)),
                '$' => seq.push(Node::At(At::End, flags)),
                '(' => {
                    let at = self.offset_of(start);
                    match self.group(flags, depth, first && seq.is_empty(), at)? {
                        GroupOutcome::Node(n) => seq.push(n),
                        GroupOutcome::Comment => {}
                        GroupOutcome::Global(f) => flags = f,
                    }
                }
                _ => unreachable!("special characters are all handled"),
            }
        }
        let mut out = Vec::with_capacity(seq.len());
        for node in seq {
            match node {
                Node::Group(None, body) => match *body {
                    Node::Concat(inner) => out.extend(inner),
                    other => out.push(other),
                },
                other => out.push(other),
            }
        }
        Ok((out, flags))
    }

    /// After `{`: `Some((min, max))` for a valid quantifier, `None` (position restored) when
    /// Python reads the `{` as a literal.
    fn braces(&mut self) -> Result<Option<(u32, Option<u32>)>, String> {
        let here = self.pos;
        if self.peek() == Some('}') {
            return Ok(None);
        }
        let digits = |p: &mut Self| {
            let mut s = String::new();
            while let Some(c) = p.peek().filter(char::is_ascii_digit) {
                s.push(c);
                p.pos += 1;
            }
            s
        };
        let lo = digits(self);
        let hi = if self.eat(',') {
            digits(self)
        } else {
            lo.clone()
        };
        if !self.eat('}') {
            self.pos = here;
            return Ok(None);
        }
        let parse = |s: &str| -> Result<u64, String> {
            s.parse::<u64>()
                .ok()
                .filter(|&n| n < MAXREPEAT)
                .ok_or_else(|| err("the repetition number is too large", self.offset_of(here)))
        };
        let min = if lo.is_empty() { 0 } else { parse(&lo)? };
        let max = if hi.is_empty() {
            None
        } else {
            Some(parse(&hi)?)
        };
        if let Some(max) = max {
            if max < min {
                return Err(err(
                    "min repeat greater than max repeat",
                    self.offset_of(here),
                ));
            }
        }
        Ok(Some((min as u32, max.map(|m| m as u32))))
    }

    fn hex(&mut self, n: usize, at: usize, what: char) -> Result<u32, String> {
        let mut v = 0u32;
        for i in 0..n {
            match self.peek().and_then(|c| c.to_digit(16)) {
                Some(d) => {
                    v = v * 16 + d;
                    self.pos += 1;
                }
                None => {
                    let _ = i;
                    return Err(err(format!("incomplete escape \\{what}"), at));
                }
            }
        }
        Ok(v)
    }

    fn octal_digits(&mut self, max: usize, into: &mut u32) {
        for _ in 0..max {
            match self.peek().and_then(|c| c.to_digit(8)) {
                Some(d) => {
                    *into = *into * 8 + d;
                    self.pos += 1;
                }
                None => break,
            }
        }
    }

    /// Escapes common to both contexts: `Ok(Some(code point))` or `Ok(None)` if not one.
    fn char_escape(&mut self, c: char, at: usize) -> Result<Option<u32>, String> {
        Ok(Some(match c {
            'a' => 7,
            'f' => 0x0C,
            'n' => 0x0A,
            'r' => 0x0D,
            't' => 0x09,
            'v' => 0x0B,
            '\\' => '\\' as u32,
            'x' => self.hex(2, at, 'x')?,
            'u' => self.hex(4, at, 'u')?,
            'U' => {
                let v = self.hex(8, at, 'U')?;
                if v > 0x10FFFF {
                    return Err(err(format!("bad escape \\U{v:08x}"), at));
                }
                v
            }
            'N' => {
                return Err(err(
                    "named character escapes (\\N{...}) are not supported: write the \
                     character itself or \\uXXXX",
                    at,
                ))
            }
            _ => return Ok(None),
        }))
    }

    fn category(c: char) -> Option<Cat> {
        Some(match c {
            'd' => Cat::Digit,
            'D' => Cat::NotDigit,
            's' => Cat::Space,
            'S' => Cat::NotSpace,
            'w' => Cat::Word,
            'W' => Cat::NotWord,
            _ => return None,
        })
    }

    fn escape(&mut self, flags: Flags) -> Result<Node, String> {
        let at = self.offset_of(self.pos - 1);
        let Some(c) = self.next() else {
            return Err(err("bad escape (end of pattern)", at));
        };
        if let Some(cat) = Self::category(c) {
            return Ok(Node::Class(false, vec![Item::Cat(cat)], flags));
        }
        let at_code = match c {
            'A' => Some(At::BeginningString),
            'Z' => Some(At::EndString),
            'b' => Some(At::Boundary),
            'B' => Some(At::NonBoundary),
            _ => None,
        };
        if let Some(a) = at_code {
            return Ok(Node::At(a, flags));
        }
        if let Some(v) = self.char_escape(c, at)? {
            return Ok(Node::Literal(v, flags));
        }
        if c == '0' {
            let mut v = 0;
            self.octal_digits(2, &mut v);
            return Ok(Node::Literal(v, flags));
        }
        if let Some(d1) = c.to_digit(10) {
            if let Some(d2) = self.peek().and_then(|n| n.to_digit(10)) {
                let d3 = self.chars.get(self.pos + 1).and_then(|n| n.to_digit(8));
                if d1 < 8 && d2 < 8 && d3.is_some() {
                    self.pos += 2;
                    let v = d1 * 64 + d2 * 8 + d3.unwrap_or(0);
                    if v > 0o377 {
                        return Err(err(
                            format!(
                                "octal escape value \\{d1}{d2}{} outside of range 0-0o377",
                                d3.unwrap_or(0)
                            ),
                            at,
                        ));
                    }
                    return Ok(Node::Literal(v, flags));
                }
                self.pos += 1;
            }
            return Err(err(
                "backreferences (\\1 .. \\99) are not supported: matching them needs \
                 backtracking, and matching stays linear-time",
                at,
            ));
        }
        if c.is_ascii_alphabetic() {
            return Err(err(format!("bad escape \\{c}"), at));
        }
        Ok(Node::Literal(c as u32, flags))
    }

    fn class_escape(&mut self) -> Result<Item, String> {
        let at = self.offset_of(self.pos - 1);
        let Some(c) = self.next() else {
            return Err(err("bad escape (end of pattern)", at));
        };
        if c == 'b' {
            return Ok(Item::Lit(8));
        }
        if let Some(v) = self.char_escape(c, at)? {
            return Ok(Item::Lit(v));
        }
        if let Some(cat) = Self::category(c) {
            return Ok(Item::Cat(cat));
        }
        if let Some(d) = c.to_digit(8) {
            let mut v = d;
            self.octal_digits(2, &mut v);
            if v > 0o377 {
                return Err(err("octal escape value outside of range 0-0o377", at));
            }
            return Ok(Item::Lit(v));
        }
        if c.is_ascii_alphanumeric() {
            return Err(err(format!("bad escape \\{c}"), at));
        }
        Ok(Item::Lit(c as u32))
    }

    fn class(&mut self, flags: Flags) -> Result<Node, String> {
        let here = self.offset_of(self.pos - 1);
        let negate = self.eat('^');
        let mut set: Vec<Item> = Vec::new();
        let unterminated = || err("unterminated character set", here);
        loop {
            let this = self.next().ok_or_else(unterminated)?;
            if this == ']' && !set.is_empty() {
                break;
            }
            let code1 = if this == '\\' {
                self.class_escape()?
            } else {
                Item::Lit(this as u32)
            };
            if self.eat('-') {
                let that = self.next().ok_or_else(unterminated)?;
                if that == ']' {
                    set.push(code1);
                    set.push(Item::Lit('-' as u32));
                    break;
                }
                let code2 = if that == '\\' {
                    self.class_escape()?
                } else {
                    Item::Lit(that as u32)
                };
                match (code1, code2) {
                    (Item::Lit(lo), Item::Lit(hi)) if lo <= hi => set.push(Item::Range(lo, hi)),
                    _ => return Err(err("bad character range", here)),
                }
            } else {
                set.push(code1);
            }
        }
        let set = uniq(set);
        if let [Item::Lit(c)] = set.as_slice() {
            return Ok(if negate {
                Node::NotLiteral(*c, flags)
            } else {
                Node::Literal(*c, flags)
            });
        }
        Ok(Node::Class(negate, set, flags))
    }

    fn group_name(&mut self, end: char, at: usize) -> Result<String, String> {
        let mut name = String::new();
        loop {
            match self.next() {
                None => return Err(err("missing group name terminator", at)),
                Some(c) if c == end => break,
                Some(c) => name.push(c),
            }
        }
        let mut cs = name.chars();
        let ident = cs.next().is_some_and(|c| c == '_' || c.is_alphabetic())
            && cs.all(|c| c == '_' || c.is_alphanumeric());
        if !ident {
            return Err(err(format!("bad character in group name {name:?}"), at));
        }
        Ok(name)
    }

    fn group(
        &mut self,
        flags: Flags,
        depth: u32,
        may_be_global: bool,
        at: usize,
    ) -> Result<GroupOutcome, String> {
        let mut capture = true;
        let mut name = None;
        let mut inner = flags;
        if self.eat('?') {
            let Some(c) = self.next() else {
                return Err(err("unexpected end of pattern", at));
            };
            match c {
                'P' => {
                    if self.eat('<') {
                        let n = self.group_name('>', at)?;
                        if self.names.contains(&n) {
                            return Err(err(format!("redefinition of group name {n:?}"), at));
                        }
                        name = Some(n);
                    } else if self.eat('=') {
                        let n = self.group_name(')', at)?;
                        if !self.names.contains(&n) {
                            return Err(err(format!("unknown group name {n:?}"), at));
                        }
                        return Err(err(
                            format!(
                                "backreference (?P={n}) is not supported: matching it needs \
                                 backtracking, and matching stays linear-time"
                            ),
                            at,
                        ));
                    } else {
                        return Err(err("unknown extension ?P", at));
                    }
                }
                ':' => capture = false,
                '#' => {
                    loop {
                        match self.next() {
                            None => return Err(err("missing ), unterminated comment", at)),
                            Some(')') => break,
                            Some(_) => {}
                        }
                    }
                    return Ok(GroupOutcome::Comment);
                }
                '=' | '!' => {
                    return Err(err(
                        "look-around (here look-ahead, (?=...) or (?!...)) is not supported: it needs \
                         backtracking, and matching stays linear-time",
                        at,
                    ))
                }
                '<' => {
                    return Err(match self.peek() {
                        Some('=') | Some('!') => err(
                            "look-around (here look-behind, (?<=...) or (?<!...)) is not supported: it needs \
                             backtracking, and matching stays linear-time",
                            at,
                        ),
                        _ => err("unknown extension ?<", at),
                    })
                }
                '(' => {
                    return Err(err(
                        "conditional groups ((?(id)yes|no)) are not supported: they test a \
                         backreference, which needs backtracking",
                        at,
                    ))
                }
                '>' => {
                    return Err(err(
                        "atomic groups ((?>...)) are not supported: they discard \
                         backtracking positions, which has no linear-time equivalent",
                        at,
                    ))
                }
                c if "aiLmsux-".contains(c) => {
                    self.pos -= 1;
                    let (add, del, global) = self.flag_letters(at)?;
                    let apply = |mut f: Flags| {
                        for (letter, on) in add.chars().map(|l| (l, true)).chain(del.chars().map(|l| (l, false))) {
                            match letter {
                                'i' => f.ignore_case = on,
                                'm' => f.multiline = on,
                                's' => f.dotall = on,
                                'x' => f.verbose = on,
                                'a' => f.ascii = on,
                                'u' => f.ascii = false,
                                _ => {}
                            }
                        }
                        f
                    };
                    if global {
                        if !may_be_global {
                            return Err(err("global flags not at the start of the expression", at));
                        }
                        return Ok(GroupOutcome::Global(apply(flags)));
                    }
                    inner = apply(flags);
                    capture = false;
                }
                other => return Err(err(format!("unknown extension ?{other}"), at)),
            }
        }
        let index = if capture {
            self.groups += 1;
            if let Some(n) = &name {
                self.names.push(n.clone());
            }
            self.open.push(self.groups);
            Some((self.groups, name))
        } else {
            None
        };
        let body = self.parse_sub(inner, depth + 1)?;
        if !self.eat(')') {
            return Err(err("missing ), unterminated subpattern", at));
        }
        if index.is_some() {
            self.open.pop();
        }
        if index.is_none() && inner != flags {
            return Ok(GroupOutcome::Node(Node::FlagGroup(Box::new(body))));
        }
        Ok(GroupOutcome::Node(Node::Group(index, Box::new(body))))
    }

    /// Flag letters after `(?`: (added, removed, global). Consumes through `)` or `:`.
    fn flag_letters(&mut self, at: usize) -> Result<(String, String, bool), String> {
        let mut add = String::new();
        let mut del = String::new();
        while let Some(c) = self.peek().filter(|c| "aiLmsux".contains(*c)) {
            add.push(c);
            self.pos += 1;
        }
        if add.contains('L') {
            return Err(err(
                "bad inline flag: cannot use 'L' flag with a str pattern",
                at,
            ));
        }
        if add.matches(['a', 'u']).count() > 1 {
            return Err(err(
                "bad inline flag: flags 'a', 'u' and 'L' are incompatible",
                at,
            ));
        }
        if self.eat(')') {
            if add.is_empty() {
                return Err(err("missing flag", at));
            }
            return Ok((add, del, true));
        }
        if self.eat('-') {
            while let Some(c) = self.peek().filter(|c| c.is_ascii_alphabetic()) {
                if !"imsx".contains(c) {
                    return Err(err(
                        "bad inline flag: cannot turn off flags 'a', 'u' and 'L'",
                        at,
                    ));
                }
                del.push(c);
                self.pos += 1;
            }
            if del.is_empty() {
                return Err(err("missing flag", at));
            }
        }
        if !self.eat(':') {
            return Err(err("missing :", at));
        }
        if add.chars().any(|c| del.contains(c)) {
            return Err(err("bad inline flag: flag turned on and off", at));
        }
        Ok((add, del, false))
    }
}

enum GroupOutcome {
    Node(Node),
    Comment,
    Global(Flags),
}

fn uniq(items: Vec<Item>) -> Vec<Item> {
    let mut out: Vec<Item> = Vec::with_capacity(items.len());
    for it in items {
        if !out.contains(&it) {
            out.push(it);
        }
    }
    out
}

// ---------------------------------------------------------------- classes from the tables

fn class_of(ranges: &[(u32, u32)]) -> ClassUnicode {
    ClassUnicode::new(ranges.iter().filter_map(|&(a, b)| range(a, b)))
}

/// A range of code points as chars, surrogates left out (they cannot occur in a str).
fn range(a: u32, b: u32) -> Option<ClassUnicodeRange> {
    let a = if (0xD800..=0xDFFF).contains(&a) {
        0xE000
    } else {
        a
    };
    let b = if (0xD800..=0xDFFF).contains(&b) {
        0xD7FF
    } else {
        b
    };
    if a > b {
        return None;
    }
    Some(ClassUnicodeRange::new(
        char::from_u32(a)?,
        char::from_u32(b)?,
    ))
}

fn single(c: u32) -> ClassUnicode {
    ClassUnicode::new(range(c, c))
}

fn contains(cls: &ClassUnicode, c: u32) -> bool {
    let Some(c) = char::from_u32(c) else {
        return false;
    };
    cls.ranges()
        .binary_search_by(|r| {
            if r.end() < c {
                std::cmp::Ordering::Less
            } else if r.start() > c {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        })
        .is_ok()
}

fn union(mut a: ClassUnicode, b: &ClassUnicode) -> ClassUnicode {
    a.union(b);
    a
}

/// `{c : f(c) ∈ x}` for a mapping given by the pairs where it changes `c`.
fn preimage(x: &ClassUnicode, changed: &[(u32, u32)]) -> ClassUnicode {
    let mut add = Vec::new();
    let mut remove = Vec::new();
    for &(c, image) in changed {
        if contains(x, image) {
            add.push(c);
        } else {
            remove.push(c);
        }
    }
    let mut out = x.clone();
    out.difference(&ClassUnicode::new(
        remove.into_iter().filter_map(|c| range(c, c)),
    ));
    out.union(&ClassUnicode::new(
        add.into_iter().filter_map(|c| range(c, c)),
    ));
    out
}

/// `{f(c) : c ∈ x}`.
fn image(x: &ClassUnicode, changed: &[(u32, u32)]) -> ClassUnicode {
    let mut out = x.clone();
    let domain = ClassUnicode::new(changed.iter().filter_map(|&(c, _)| range(c, c)));
    out.difference(&domain);
    out.union(&ClassUnicode::new(
        changed
            .iter()
            .filter(|&&(c, _)| contains(x, c))
            .filter_map(|&(_, i)| range(i, i)),
    ));
    out
}

fn ascii_lower_pairs() -> Vec<(u32, u32)> {
    (u32::from(b'A')..=u32::from(b'Z'))
        .map(|c| (c, c + 32))
        .collect()
}

fn cased() -> &'static ClassUnicode {
    static CASED: OnceLock<ClassUnicode> = OnceLock::new();
    CASED.get_or_init(|| class_of(tables::CASED))
}

fn is_cased(c: u32, ascii: bool) -> bool {
    if ascii {
        char::from_u32(c).is_some_and(|c| c.is_ascii_alphabetic())
    } else {
        contains(cased(), c)
    }
}

/// Whether any code point of `a..=b` is cased.
fn any_cased(a: u32, b: u32, ascii: bool) -> bool {
    let Some(r) = range(a, b) else {
        return false;
    };
    let mut cls = ClassUnicode::new([r]);
    if ascii {
        cls.intersect(&class_of(&[(0x41, 0x5A), (0x61, 0x7A)]));
    } else {
        cls.intersect(cased());
    }
    !cls.ranges().is_empty()
}

/// Adds sre's extra equivalences of every member.
fn with_fixes(mut x: ClassUnicode) -> ClassUnicode {
    let extra: Vec<u32> = tables::FIXES
        .iter()
        .filter(|&&(k, _)| contains(&x, k))
        .map(|&(_, v)| v)
        .collect();
    x.union(&ClassUnicode::new(
        extra.into_iter().filter_map(|c| range(c, c)),
    ));
    x
}

fn category(cat: Cat, ascii: bool) -> ClassUnicode {
    let (base, negated) = match cat {
        Cat::Digit => (Cat::Digit, false),
        Cat::NotDigit => (Cat::Digit, true),
        Cat::Space => (Cat::Space, false),
        Cat::NotSpace => (Cat::Space, true),
        Cat::Word => (Cat::Word, false),
        Cat::NotWord => (Cat::Word, true),
    };
    let mut cls = match (base, ascii) {
        (Cat::Digit, true) => class_of(&[(0x30, 0x39)]),
        (Cat::Space, true) => class_of(&[(0x09, 0x0D), (0x20, 0x20)]),
        (_, true) => class_of(&[(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)]),
        (Cat::Digit, false) => class_of(tables::DIGIT),
        (Cat::Space, false) => class_of(tables::SPACE),
        (_, false) => class_of(tables::WORD),
    };
    if negated {
        cls.negate();
    }
    cls
}

/// The code points a literal matches under `flags` (sre's LITERAL / *_IGNORE opcodes).
fn literal_class(c: u32, flags: Flags) -> ClassUnicode {
    if !flags.ignore_case || !is_cased(c, flags.ascii) {
        return single(c);
    }
    if flags.ascii {
        let lo = if (0x41..=0x5A).contains(&c) {
            c + 32
        } else {
            c
        };
        return ClassUnicode::new(range(lo, lo).into_iter().chain(range(lo - 32, lo - 32)));
    }
    let folds = folds();
    let lo = folds.lower.get(&c).copied().unwrap_or(c);
    let mut members = vec![lo];
    members.extend(
        tables::FIXES
            .iter()
            .filter(|&&(k, _)| k == lo)
            .map(|&(_, v)| v),
    );
    let mut out = Vec::new();
    for m in members {
        // Every c with lower(c) == m: m itself unless lower-casing changes it, plus the rest.
        if !folds.lower.contains_key(&m) {
            out.push(m);
        }
        out.extend(folds.by_lower.get(&m).into_iter().flatten().copied());
    }
    ClassUnicode::new(out.into_iter().filter_map(|c| range(c, c)))
}

/// sre's lower-casing as lookups (literals are the common case; sets use the class algebra).
struct Folds {
    lower: std::collections::HashMap<u32, u32>,
    by_lower: std::collections::HashMap<u32, Vec<u32>>,
}

fn folds() -> &'static Folds {
    static FOLDS: OnceLock<Folds> = OnceLock::new();
    FOLDS.get_or_init(|| {
        let mut by_lower: std::collections::HashMap<u32, Vec<u32>> = Default::default();
        for &(c, l) in tables::LOWER {
            by_lower.entry(l).or_default().push(c);
        }
        Folds {
            lower: tables::LOWER.iter().copied().collect(),
            by_lower,
        }
    })
}

/// The code points a set matches under `flags` (sre's `_optimize_charset` + IN opcodes).
fn set_class(negate: bool, items: &[Item], flags: Flags) -> ClassUnicode {
    let mut lits = ClassUnicode::empty();
    let mut cats = ClassUnicode::empty();
    let mut non_bmp_lits = ClassUnicode::empty();
    let mut non_bmp_ranges = ClassUnicode::empty();
    let mut has_cased = false;
    for item in items {
        match *item {
            Item::Lit(c) => {
                if c > 0xFFFF {
                    non_bmp_lits.union(&single(c));
                    has_cased = true;
                } else {
                    lits.union(&single(c));
                    has_cased |= is_cased(c, flags.ascii);
                }
            }
            Item::Range(a, b) => {
                let r = ClassUnicode::new(range(a, b));
                if b > 0xFFFF {
                    // Python lowers the BMP part into its charmap, then keeps the whole
                    // range as RANGE_UNI_IGNORE.
                    if a <= 0xFFFF {
                        lits.union(&ClassUnicode::new(range(a, 0xFFFF)));
                    }
                    non_bmp_ranges.union(&r);
                    has_cased = true;
                } else {
                    has_cased |= any_cased(a, b, flags.ascii);
                    lits.union(&r);
                }
            }
            Item::Cat(cat) => cats.union(&category(cat, flags.ascii)),
        }
    }
    let mut cls = if !flags.ignore_case || !has_cased {
        let mut all = union(lits, &cats);
        all.union(&non_bmp_lits);
        all.union(&non_bmp_ranges);
        all
    } else {
        let lower: Vec<(u32, u32)>;
        let lower_pairs: &[(u32, u32)] = if flags.ascii {
            lower = ascii_lower_pairs();
            &lower
        } else {
            tables::LOWER
        };
        let mut charmap = image(&lits, lower_pairs);
        if !flags.ascii {
            charmap = with_fixes(charmap);
        }
        // What the lowered query character is tested against.
        let mut tested = union(charmap, &cats);
        tested.union(&non_bmp_lits);
        tested.union(&non_bmp_ranges);
        tested.union(&preimage(&non_bmp_ranges, tables::UPPER));
        preimage(&tested, lower_pairs)
    };
    if negate {
        cls.negate();
    }
    cls
}

// ---------------------------------------------------------------- lowering to HIR

fn class_hir(cls: ClassUnicode) -> Hir {
    Hir::class(Class::Unicode(cls))
}

/// `tail`: nothing that consumes can follow this node (a `$` here may take the final `\n`).
fn lower(node: &Node, tail: bool) -> Result<Hir, String> {
    Ok(match node {
        Node::Literal(c, f) => class_hir(literal_class(*c, *f)),
        Node::NotLiteral(c, f) => {
            let mut cls = literal_class(*c, *f);
            cls.negate();
            class_hir(cls)
        }
        Node::Class(negate, items, f) => class_hir(set_class(*negate, items, *f)),
        Node::Any(f) => {
            let mut cls = ClassUnicode::new(range(0, 0x10FFFF));
            if !f.dotall {
                cls.difference(&single(u32::from(b'\n')));
            }
            class_hir(cls)
        }
        Node::At(at, f) => match at {
            At::Beginning if f.multiline => Hir::look(Look::StartLF),
            At::Beginning | At::BeginningString => Hir::look(Look::Start),
            At::End if f.multiline => Hir::look(Look::EndLF),
            At::EndString => Hir::look(Look::End),
            At::End => {
                if !tail {
                    return Err(DOLLAR_REFUSED.to_string());
                }
                dollar_at_end(&[])?
            }
            At::Boundary => Hir::look(if f.ascii {
                Look::WordAscii
            } else {
                Look::WordUnicode
            }),
            At::NonBoundary => Hir::look(if f.ascii {
                Look::WordAsciiNegate
            } else {
                Look::WordUnicodeNegate
            }),
        },
        Node::Concat(items) => {
            let mut out = Vec::with_capacity(items.len());
            let mut i = 0;
            while i < items.len() {
                let item = &items[i];
                i += 1;
                if !matches!(item, Node::At(At::End, f) if !f.multiline) {
                    let rest_empty = items[i..].iter().all(is_nothing);
                    out.push(lower(item, tail && rest_empty)?);
                    continue;
                }
                // A `$` (not re.M): look at what follows it in this sequence.
                let mut j = i;
                while j < items.len() && (is_nothing(&items[j]) || matches!(items[j], Node::At(..)))
                {
                    j += 1;
                }
                let between: Vec<&Node> = items[i..j].iter().filter(|n| !is_nothing(n)).collect();
                if j == items.len() {
                    if !tail {
                        return Err(DOLLAR_REFUSED.to_string());
                    }
                    out.push(dollar_at_end(&between)?);
                    i = j;
                    continue;
                }
                // `$` then zero-width items then one character C: C must be the final `\n`.
                let Some(next) = single_char_class(&items[j]) else {
                    return Err(DOLLAR_REFUSED.to_string());
                };
                for n in &between {
                    out.push(before_final_newline(n)?);
                }
                out.push(if contains(&next, u32::from(b'\n')) {
                    Hir::literal(*b"\n")
                } else {
                    Hir::fail()
                });
                out.push(Hir::look(Look::End));
                i = j + 1;
            }
            Hir::concat(out)
        }
        Node::Alt(branches) => Hir::alternation(
            branches
                .iter()
                .map(|b| lower(b, tail))
                .collect::<Result<_, _>>()?,
        ),
        Node::Group(None, body) | Node::FlagGroup(body) => lower(body, tail)?,
        Node::Group(Some((index, name)), body) => Hir::capture(Capture {
            index: *index,
            name: name.as_deref().map(Box::from),
            sub: Box::new(lower(body, tail)?),
        }),
        // Repeating what consumes nothing decides nothing more than doing it once.
        Node::Repeat(min, max, greedy, body) if zero_width(body) => {
            if *max == Some(0) {
                Hir::empty()
            } else if *min == 0 {
                Hir::repetition(Repetition {
                    min: 0,
                    max: Some(1),
                    greedy: *greedy,
                    sub: Box::new(lower(body, tail)?),
                })
            } else {
                lower(body, tail)?
            }
        }
        Node::Repeat(min, max, greedy, body) => Hir::repetition(Repetition {
            min: *min,
            max: *max,
            greedy: *greedy,
            sub: Box::new(lower(body, tail && *max == Some(1))?),
        }),
    })
}

/// Whether `hir` matches the empty query the way Python decides it: every look-around holds
/// at the one position of an empty string except `\b` and `\B` (sre's `\B` never matches in
/// an empty string, where regex-automata's does).
pub fn matches_empty(hir: &Hir) -> bool {
    use regex_syntax::hir::HirKind;
    match hir.kind() {
        HirKind::Empty => true,
        HirKind::Literal(_) | HirKind::Class(_) => false,
        HirKind::Look(look) => !matches!(
            look,
            Look::WordAscii | Look::WordAsciiNegate | Look::WordUnicode | Look::WordUnicodeNegate
        ),
        HirKind::Repetition(rep) => rep.min == 0 || matches_empty(&rep.sub),
        HirKind::Capture(cap) => matches_empty(&cap.sub),
        HirKind::Concat(subs) => subs.iter().all(matches_empty),
        HirKind::Alternation(subs) => subs.iter().any(matches_empty),
    }
}

const DOLLAR_REFUSED: &str = "`$` followed by more pattern is not supported here: Python's `$` \
     also matches before a final newline, which needs look-ahead in this position; use `\\Z` \
     (end of text), `(?m:$)`, or end the pattern with `$`";

/// `$` then the zero-width `after`, ending the pattern: either at the end of the text, or
/// before a final `\n` that the hidden group consumes (nothing after it can see the
/// difference, and spans are cut back by one).
fn dollar_at_end(after: &[&Node]) -> Result<Hir, String> {
    let mut at_end = vec![Hir::look(Look::End)];
    let mut before_newline = Vec::new();
    for n in after {
        at_end.push(lower(n, false).or_else(|_| {
            // Another `$` at the very end is the end of the text.
            Ok::<Hir, String>(Hir::look(Look::End))
        })?);
        before_newline.push(before_final_newline(n)?);
    }
    before_newline.push(Hir::capture(Capture {
        index: u32::MAX,
        name: Some(DOLLAR_NEWLINE_GROUP.into()),
        sub: Box::new(Hir::literal(*b"\n")),
    }));
    before_newline.push(Hir::look(Look::End));
    Ok(Hir::alternation(vec![
        Hir::concat(at_end),
        Hir::concat(before_newline),
    ]))
}

/// A zero-width node evaluated just before the text's final `\n`.
fn before_final_newline(node: &Node) -> Result<Hir, String> {
    Ok(match node {
        Node::At(At::End, f) if !f.multiline => Hir::empty(),
        Node::At(At::EndString, _) => Hir::fail(),
        Node::At(..) => lower(node, false)?,
        _ => Hir::empty(),
    })
}

/// The characters a single-character node matches, if it is one.
fn single_char_class(node: &Node) -> Option<ClassUnicode> {
    match node {
        Node::Literal(..) | Node::NotLiteral(..) | Node::Class(..) | Node::Any(..) => {
            match lower(node, false).ok()?.kind() {
                regex_syntax::hir::HirKind::Class(Class::Unicode(c)) => Some(c.clone()),
                regex_syntax::hir::HirKind::Literal(lit) => {
                    let c = std::str::from_utf8(&lit.0).ok()?.chars().next()?;
                    Some(single(c as u32))
                }
                _ => None,
            }
        }
        _ => None,
    }
}

/// Whether `node` never consumes a character.
fn zero_width(node: &Node) -> bool {
    match node {
        Node::At(..) => true,
        Node::Concat(items) | Node::Alt(items) => items.iter().all(zero_width),
        Node::Group(_, body) | Node::FlagGroup(body) => zero_width(body),
        Node::Repeat(_, _, _, body) => zero_width(body),
        _ => false,
    }
}

/// A node that matches nothing at all: empty sequences and groups of them.
fn is_nothing(node: &Node) -> bool {
    match node {
        Node::Concat(items) => items.iter().all(is_nothing),
        Node::Group(_, body) | Node::FlagGroup(body) => is_nothing(body),
        _ => false,
    }
}

/// Renumbers capture groups 1.. in order (the `$` group gets its real index here).
pub fn renumber(hir: &Hir) -> Hir {
    fn walk(hir: &Hir, next: &mut u32) -> Hir {
        use regex_syntax::hir::HirKind;
        match hir.kind() {
            HirKind::Capture(cap) => {
                let index = *next;
                *next += 1;
                // Each hidden `$` group gets a unique name (names must be unique).
                let name = match cap.name.as_deref() {
                    Some(DOLLAR_NEWLINE_GROUP) => {
                        Some(format!("{DOLLAR_NEWLINE_GROUP}{index}").into())
                    }
                    _ => cap.name.clone(),
                };
                Hir::capture(Capture {
                    index,
                    name,
                    sub: Box::new(walk(&cap.sub, next)),
                })
            }
            HirKind::Repetition(rep) => Hir::repetition(Repetition {
                min: rep.min,
                max: rep.max,
                greedy: rep.greedy,
                sub: Box::new(walk(&rep.sub, next)),
            }),
            HirKind::Concat(subs) => Hir::concat(subs.iter().map(|h| walk(h, next)).collect()),
            HirKind::Alternation(subs) => {
                Hir::alternation(subs.iter().map(|h| walk(h, next)).collect())
            }
            _ => hir.clone(),
        }
    }
    walk(hir, &mut 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cls(pattern: &str) -> String {
        translate(pattern, true)
            .map(|t| t.hir.to_string())
            .unwrap_or_else(|e| e)
    }

    const IGNORE_CASE: Flags = Flags {
        ignore_case: true,
        ascii: false,
        multiline: false,
        dotall: false,
        verbose: false,
    };

    #[test]
    fn case_folds_like_python() {
        let k = literal_class('k' as u32, IGNORE_CASE);
        assert!(contains(&k, 0x212A) && contains(&k, 'K' as u32));
        let i = literal_class('i' as u32, IGNORE_CASE);
        assert!(contains(&i, 0x131) && contains(&i, 0x130) && contains(&i, 'I' as u32));
    }

    #[test]
    fn refuses_with_reasons() {
        assert!(cls(r"(a)\1").contains("backreferences"));
        assert!(cls(r"(?P<x>a)(?P=x)").contains("backreference (?P=x)"));
        assert!(cls(r"a(?=b)").contains("look-ahead"));
        assert!(cls(r"a++").contains("possessive"));
        assert!(cls(r"(?>a)").contains("atomic"));
        assert!(cls(r"(a$)b").contains("`$` followed"));
        assert!(cls(r"\p{L}").contains("bad escape"));
    }

    #[test]
    fn translates_python_only_syntax() {
        for p in [
            r"\0",
            r"\141",
            r"[\1]",
            r"\060",
            r"[\b]",
            r"a(?#note)b",
            r"\Z",
            r"x{,3}",
            r"\b{start}",
        ] {
            assert!(translate(p, true).is_ok(), "{p}: {}", cls(p));
        }
    }
}
