//! nftables rules as JSON (`nft -j`), pure: weft's table built from a [`FirewallPlan`] with the
//! `nftables` crate's schema, and the one parser of `nft -j list ...` output, used by the
//! nftables driver and by `weft trace`.
//!
//! The table is `ip flannel-ipv4` (`ip6 flannel-ipv6` for an IPv6 plan) with the base chains
//! `postrtg` (type nat, hook postrouting, priority srcnat) and `forward` (type filter, hook
//! forward, priority filter) holding flannel's rules ([`weft_core::masq::FlannelRule`]) in
//! flannel's order, each with flanneld's comment. The plan's table is compared with the one read
//! back by [`TableState`], which keeps what matters (base chain settings, rule statements,
//! comments) and drops handles. It runs no command.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};

use ipnet::IpNet;
use nftables::expr::{BinaryOperation, Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, Prefix};
use nftables::schema::{Chain, NfCmd, NfListObject, NfObject, Nftables, Rule, Table};
use nftables::stmt::{Counter, Match, NATFlag, Operator, Statement, NAT};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};
use serde_json::Value;
use weft_core::masq::{AddrFamily, AddrMatch, FirewallPlan, FlannelRule, RuleAction, RuleChain};

use super::Changes;

/// The nat chain of weft's table.
pub const MASQ_CHAIN: &str = "postrtg";
/// The filter chain of weft's table.
pub const FORWARD_CHAIN: &str = "forward";
/// `priority srcnat`.
const SRCNAT_PRIORITY: i32 = 100;
/// `priority filter`.
const FILTER_PRIORITY: i32 = 0;

/// weft's table for one address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NftTable {
    pub family: NfFamily,
    pub name: &'static str,
    /// The payload protocol of its address matches (`ip`, `ip6`).
    pub protocol: &'static str,
}

impl NftTable {
    /// `ip flannel-ipv4` or `ip6 flannel-ipv6`, as flannel names them.
    pub fn for_family(family: AddrFamily) -> NftTable {
        match family {
            AddrFamily::Ipv4 => NftTable {
                family: NfFamily::IP,
                name: "flannel-ipv4",
                protocol: "ip",
            },
            AddrFamily::Ipv6 => NftTable {
                family: NfFamily::IP6,
                name: "flannel-ipv6",
                protocol: "ip6",
            },
        }
    }

    /// The family as nft's command line spells it (`ip`, `ip6`).
    pub fn family_word(&self) -> &'static str {
        self.protocol
    }

    fn table(&self) -> Table<'static> {
        Table {
            family: self.family,
            name: self.name.into(),
            handle: None,
        }
    }
}

impl std::fmt::Display for NftTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.family_word(), self.name)
    }
}

/// The statements of one of flannel's rules (its comment goes on the rule).
pub fn rule_statements(rule: &FlannelRule, table: &NftTable) -> Vec<Statement<'static>> {
    let mut out = Vec::new();
    if let Some(mark) = rule.mark {
        out.push(Statement::Match(Match {
            left: Expression::BinaryOperation(Box::new(BinaryOperation::AND(
                Expression::Named(NamedExpression::Meta(Meta { key: MetaKey::Mark })),
                Expression::Number(mark),
            ))),
            right: Expression::Number(mark),
            op: Operator::EQ,
        }));
    }
    for (field, m) in [("saddr", rule.src), ("daddr", rule.dst)] {
        if let Some(m) = m {
            out.push(addr_match(table.protocol, field, &m));
        }
    }
    out.push(match rule.action {
        RuleAction::Return => Statement::Return(None),
        RuleAction::Accept => Statement::Accept(None),
        RuleAction::Masquerade => Statement::Masquerade(Some(NAT {
            addr: None,
            family: None,
            port: None,
            flags: Some(HashSet::from([NATFlag::FullyRandom])),
        })),
    });
    out
}

fn addr_match(protocol: &'static str, field: &'static str, m: &AddrMatch) -> Statement<'static> {
    Statement::Match(Match {
        left: Expression::Named(NamedExpression::Payload(Payload::PayloadField(PayloadField {
            protocol: protocol.into(),
            field: field.into(),
        }))),
        right: Expression::Named(NamedExpression::Prefix(Prefix {
            addr: Box::new(Expression::String(m.net.network().to_string().into())),
            len: m.net.prefix_len().into(),
        })),
        op: if m.negated { Operator::NEQ } else { Operator::EQ },
    })
}

fn chain_name(chain: RuleChain) -> &'static str {
    match chain {
        RuleChain::Masq => MASQ_CHAIN,
        RuleChain::Forward => FORWARD_CHAIN,
    }
}

/// The table, chains and rules the plan asks for, as `nft -j list table` prints them (without
/// handles); empty when the plan wants neither chain.
pub fn desired_objects(plan: &FirewallPlan) -> Vec<NfListObject<'static>> {
    let table = NftTable::for_family(plan.family());
    let chains = [
        (
            RuleChain::Masq,
            NfChainType::NAT,
            NfHook::Postrouting,
            SRCNAT_PRIORITY,
            plan.masq_rule_set(),
        ),
        (
            RuleChain::Forward,
            NfChainType::Filter,
            NfHook::Forward,
            FILTER_PRIORITY,
            plan.forward_rule_set(),
        ),
    ];
    if chains.iter().all(|c| c.4.is_none()) {
        return Vec::new();
    }
    let mut out = vec![NfListObject::Table(table.table())];
    let mut rules = Vec::new();
    for (chain, kind, hook, prio, set) in chains {
        let Some(set) = set else { continue };
        out.push(NfListObject::Chain(Chain {
            family: table.family,
            table: table.name.into(),
            name: chain_name(chain).into(),
            _type: Some(kind),
            hook: Some(hook),
            prio: Some(prio),
            policy: Some(NfChainPolicy::Accept),
            ..Chain::default()
        }));
        rules.extend(set.iter().map(|rule| {
            NfListObject::Rule(Rule {
                family: table.family,
                table: table.name.into(),
                chain: chain_name(chain).into(),
                expr: rule_statements(rule, &table).into(),
                comment: Some(chain.comment().into()),
                ..Rule::default()
            })
        }));
    }
    out.extend(rules);
    out
}

/// One `nft -j -f -` transaction that replaces weft's table with what the plan asks for: it
/// creates the table if missing (so the delete cannot fail), deletes it and adds it again with
/// its chains and rules. When the plan wants neither chain it only deletes the table.
pub fn apply_batch(plan: &FirewallPlan) -> Nftables<'static> {
    let mut cmds = removal_commands(&NftTable::for_family(plan.family()));
    cmds.extend(
        desired_objects(plan)
            .into_iter()
            .map(|o| NfObject::CmdObject(NfCmd::Add(o))),
    );
    Nftables { objects: cmds.into() }
}

/// The `nft -j -f -` transaction that deletes weft's table, whether or not it exists.
pub fn removal_batch(table: &NftTable) -> Nftables<'static> {
    Nftables {
        objects: removal_commands(table).into(),
    }
}

fn removal_commands(table: &NftTable) -> Vec<NfObject<'static>> {
    vec![
        NfObject::CmdObject(NfCmd::Add(NfListObject::Table(table.table()))),
        NfObject::CmdObject(NfCmd::Delete(NfListObject::Table(table.table()))),
    ]
}

/// Why `nft -j` output could not be read.
#[derive(Debug, thiserror::Error)]
pub enum NftJsonError {
    #[error("not JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("no \"nftables\" array at the top")]
    Shape,
}

/// A ruleset (or one table of it) as `nft -j list ...` prints it: tables, their chains and
/// their rules, in order. Sets, maps and other objects are left out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ruleset {
    pub tables: Vec<TableView>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableView {
    pub family: NfFamily,
    pub name: String,
    pub chains: Vec<ChainView>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainView {
    pub name: String,
    /// Set for a base chain (one with a hook).
    pub base: Option<BaseChain>,
    pub rules: Vec<RuleView>,
}

/// A base chain's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BaseChain {
    pub kind: Option<NfChainType>,
    pub hook: NfHook,
    pub prio: Option<i32>,
    pub policy: Option<NfChainPolicy>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleView {
    pub handle: Option<u32>,
    pub comment: Option<String>,
    pub expr: RuleExpr,
}

/// A rule's statements, or, when the `nftables` crate has no type for one of them, the JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleExpr {
    Read(Vec<Statement<'static>>),
    Unread(String),
}

impl Ruleset {
    pub fn table(&self, family: NfFamily, name: &str) -> Option<&TableView> {
        self.tables.iter().find(|t| t.family == family && t.name == name)
    }
}

impl TableView {
    /// `ip flannel-ipv4`, `inet filter`, ...
    pub fn describe(&self) -> String {
        format!("{} {}", family_word(self.family), self.name)
    }
}

fn family_word(family: NfFamily) -> String {
    match serde_json::to_value(family) {
        Ok(Value::String(s)) => s,
        _ => format!("{family:?}"),
    }
}

/// Reads `nft -j list ruleset` / `nft -j list table F T` output. A rule with a statement the
/// `nftables` crate cannot type is kept as [`RuleExpr::Unread`]; a chain or table it cannot
/// type is left out with its rules.
pub fn parse_ruleset(json: &str) -> Result<Ruleset, NftJsonError> {
    let doc: Value = serde_json::from_str(json)?;
    let objects = doc
        .get("nftables")
        .and_then(Value::as_array)
        .ok_or(NftJsonError::Shape)?;
    let mut ruleset = Ruleset::default();
    for object in objects {
        if let Some(table) = object.get("table") {
            if let Ok(t) = serde_json::from_value::<Table>(table.clone()) {
                ruleset.tables.push(TableView {
                    family: t.family,
                    name: t.name.into_owned(),
                    chains: Vec::new(),
                });
            }
        } else if let Some(chain) = object.get("chain") {
            let Ok(c) = serde_json::from_value::<Chain>(chain.clone()) else {
                continue;
            };
            let Some(table) = table_mut(&mut ruleset, c.family, &c.table) else {
                continue;
            };
            table.chains.push(ChainView {
                name: c.name.into_owned(),
                base: c.hook.map(|hook| BaseChain {
                    kind: c._type,
                    hook,
                    prio: c.prio,
                    policy: c.policy,
                }),
                rules: Vec::new(),
            });
        } else if let Some(rule) = object.get("rule") {
            let text = |key: &str| rule.get(key).and_then(Value::as_str);
            let (Some(family), Some(table), Some(chain)) = (
                rule.get("family")
                    .and_then(|f| serde_json::from_value::<NfFamily>(f.clone()).ok()),
                text("table"),
                text("chain"),
            ) else {
                continue;
            };
            let Some(chain) =
                table_mut(&mut ruleset, family, table).and_then(|t| t.chains.iter_mut().find(|c| c.name == chain))
            else {
                continue;
            };
            let expr = rule.get("expr").cloned().unwrap_or(Value::Array(Vec::new()));
            chain.rules.push(RuleView {
                handle: rule
                    .get("handle")
                    .and_then(Value::as_u64)
                    .and_then(|h| u32::try_from(h).ok()),
                comment: text("comment").map(str::to_string),
                expr: read_statements(expr),
            });
        }
    }
    Ok(ruleset)
}

fn table_mut<'a>(ruleset: &'a mut Ruleset, family: NfFamily, name: &str) -> Option<&'a mut TableView> {
    ruleset.tables.iter_mut().find(|t| t.family == family && t.name == name)
}

fn read_statements(mut expr: Value) -> RuleExpr {
    normalize_nat_flags(&mut expr);
    match serde_json::from_value::<Vec<Statement<'static>>>(expr.clone()) {
        Ok(statements) => RuleExpr::Read(statements),
        Err(_) => RuleExpr::Unread(expr.to_string()),
    }
}

/// nft prints one NAT flag as a string (`"flags": "fully-random"`), the `nftables` crate (0.6)
/// reads only a list: wrap it.
fn normalize_nat_flags(expr: &mut Value) {
    let Some(statements) = expr.as_array_mut() else { return };
    for statement in statements {
        for key in ["masquerade", "snat", "dnat", "redirect"] {
            if let Some(flags) = statement.get_mut(key).and_then(|nat| nat.get_mut("flags")) {
                if flags.is_string() {
                    *flags = Value::Array(vec![flags.take()]);
                }
            }
        }
    }
}

/// weft's table as the comparison sees it: chains by name with their base settings and their
/// rules' statements and comments; handles are left out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableState {
    pub chains: BTreeMap<String, ChainState>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainState {
    pub base: Option<BaseChain>,
    pub rules: Vec<(RuleExpr, Option<String>)>,
}

impl TableState {
    /// weft's table out of a parsed listing; None when the table is not there.
    pub fn from_ruleset(ruleset: &Ruleset, table: &NftTable) -> Option<TableState> {
        let view = ruleset.table(table.family, table.name)?;
        Some(TableState {
            chains: view
                .chains
                .iter()
                .map(|c| {
                    let rules = c.rules.iter().map(|r| (r.expr.clone(), r.comment.clone())).collect();
                    (c.name.clone(), ChainState { base: c.base, rules })
                })
                .collect(),
        })
    }

    /// The table the plan asks for, None when it wants neither chain. Built by reading the
    /// plan's objects back through [`parse_ruleset`], the same way the kernel's listing is read.
    pub fn desired(plan: &FirewallPlan) -> Option<TableState> {
        let objects = desired_objects(plan);
        if objects.is_empty() {
            return None;
        }
        let listing = Nftables {
            objects: objects.into_iter().map(NfObject::ListObject).collect::<Vec<_>>().into(),
        };
        let json = serde_json::to_string(&listing).expect("nftables objects serialize");
        let ruleset = parse_ruleset(&json).expect("weft's own listing parses");
        TableState::from_ruleset(&ruleset, &NftTable::for_family(plan.family()))
    }

    /// The same chains with the same number of rules and base settings: what "printed in
    /// another form" may differ by.
    pub fn shape(&self) -> Vec<(String, Option<BaseChain>, usize)> {
        self.chains
            .iter()
            .map(|(name, c)| (name.clone(), c.base, c.rules.len()))
            .collect()
    }
}

/// What differs between the table the plan wants and the one the kernel has, per chain. When
/// only the table differs (a chain of someone else's inside it), both chains are rewritten with
/// it, so both count as corrected.
pub fn changes(want: Option<&TableState>, have: Option<&TableState>) -> Changes {
    if want == have {
        return Changes::default();
    }
    let chain = |t: Option<&TableState>, name: &str| t.and_then(|t| t.chains.get(name)).cloned();
    let masq = chain(want, MASQ_CHAIN) != chain(have, MASQ_CHAIN);
    let forward = chain(want, FORWARD_CHAIN) != chain(have, FORWARD_CHAIN);
    if !masq && !forward {
        return Changes {
            masq: true,
            forward: true,
        };
    }
    Changes { masq, forward }
}

/// A base chain's declaration as `nft list` prints it (with the priority as a number).
pub fn render_base(base: &BaseChain) -> String {
    let word = |v: Value| v.as_str().map(str::to_string).unwrap_or_default();
    let mut out = String::new();
    if let Some(kind) = base.kind {
        out.push_str(&format!(
            "type {} ",
            word(serde_json::to_value(kind).unwrap_or_default())
        ));
    }
    out.push_str(&format!(
        "hook {}",
        word(serde_json::to_value(base.hook).unwrap_or_default())
    ));
    if let Some(prio) = base.prio {
        out.push_str(&format!(" priority {prio}"));
    }
    out.push(';');
    if let Some(policy) = base.policy {
        out.push_str(&format!(
            " policy {};",
            word(serde_json::to_value(policy).unwrap_or_default())
        ));
    }
    out
}

/// A rule as `nft list` prints it, for the statements weft reads (address, interface and mark
/// matches, counters, verdicts, masquerade); any other statement shows as its JSON.
pub fn render_rule(rule: &RuleView) -> String {
    let mut words: Vec<String> = match &rule.expr {
        RuleExpr::Read(statements) => statements.iter().map(render_statement).collect(),
        RuleExpr::Unread(json) => vec![json.clone()],
    };
    if let Some(comment) = &rule.comment {
        words.push(format!("comment \"{comment}\""));
    }
    words.join(" ")
}

fn render_statement(statement: &Statement) -> String {
    match statement {
        Statement::Match(m) => render_match(m),
        Statement::Accept(_) => "accept".into(),
        Statement::Drop(_) => "drop".into(),
        Statement::Return(_) => "return".into(),
        Statement::Continue(_) => "continue".into(),
        Statement::Jump(j) => format!("jump {}", j.target),
        Statement::Goto(j) => format!("goto {}", j.target),
        Statement::Reject(_) => "reject".into(),
        Statement::Counter(Counter::Anonymous(c)) => {
            let c = c.clone().unwrap_or_default();
            format!(
                "counter packets {} bytes {}",
                c.packets.unwrap_or(0),
                c.bytes.unwrap_or(0)
            )
        }
        Statement::Counter(Counter::Named(name)) => format!("counter name \"{name}\""),
        Statement::Masquerade(nat) => {
            let mut out = String::from("masquerade");
            let flags = nat.as_ref().and_then(|n| n.flags.as_ref());
            // flags in nft's order
            for (flag, word) in [
                (NATFlag::Random, "random"),
                (NATFlag::FullyRandom, "fully-random"),
                (NATFlag::Persistent, "persistent"),
            ] {
                if flags.is_some_and(|f| f.contains(&flag)) {
                    out.push(' ');
                    out.push_str(word);
                }
            }
            out
        }
        other => serde_json::to_string(other).unwrap_or_else(|_| format!("{other:?}")),
    }
}

fn render_match(m: &Match) -> String {
    let is_mark = |e: &Expression| matches!(e, Expression::Named(NamedExpression::Meta(Meta { key: MetaKey::Mark })));
    let (left, hex) = match &m.left {
        Expression::BinaryOperation(op) => match op.as_ref() {
            BinaryOperation::AND(a, b) => {
                let hex = is_mark(a);
                (format!("{} & {}", render_expr(a, hex), render_expr(b, hex)), hex)
            }
            _ => (render_expr(&m.left, false), false),
        },
        left => (render_expr(left, false), is_mark(left)),
    };
    let quoted = matches!(
        &m.left,
        Expression::Named(NamedExpression::Meta(Meta {
            key: MetaKey::Iifname | MetaKey::Oifname
        }))
    );
    let right = match (&m.right, quoted) {
        (Expression::String(s), true) => format!("\"{s}\""),
        (right, _) => render_expr(right, hex),
    };
    let op = match m.op {
        // nft leaves `==` out unless the left side is an expression of its own
        Operator::EQ if !matches!(m.left, Expression::BinaryOperation(_)) => String::new(),
        Operator::IN => String::new(),
        op => serde_json::to_value(op)
            .ok()
            .and_then(|v| v.as_str().map(|s| format!("{s} ")))
            .unwrap_or_default(),
    };
    format!("{left} {op}{right}")
}

fn render_expr(e: &Expression, hex: bool) -> String {
    match e {
        Expression::String(s) => s.to_string(),
        Expression::Number(n) if hex => format!("{n:#010x}"),
        Expression::Number(n) => n.to_string(),
        Expression::Boolean(b) => b.to_string(),
        Expression::List(items) => items.iter().map(|i| render_expr(i, hex)).collect::<Vec<_>>().join(","),
        Expression::Named(NamedExpression::Payload(Payload::PayloadField(p))) => format!("{} {}", p.protocol, p.field),
        Expression::Named(NamedExpression::Prefix(p)) => format!("{}/{}", render_expr(&p.addr, false), p.len),
        Expression::Named(NamedExpression::Meta(meta)) => {
            let key = serde_json::to_value(meta.key)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            match meta.key {
                MetaKey::Iifname | MetaKey::Oifname | MetaKey::Iif | MetaKey::Oif => key,
                _ => format!("meta {key}"),
            }
        }
        Expression::Named(NamedExpression::CT(ct)) => format!("ct {}", ct.key),
        other => serde_json::to_string(other).unwrap_or_else(|_| format!("{other:?}")),
    }
}

/// An address match's right side read back: a prefix, or a plain address (nft prints a /32 or
/// /128 prefix as the address). None for anything else (a set, a range, a named set).
pub fn addr_of(e: &Expression) -> Option<IpNet> {
    match e {
        Expression::Named(NamedExpression::Prefix(p)) => match p.addr.as_ref() {
            Expression::String(a) => format!("{a}/{}", p.len).parse().ok(),
            _ => None,
        },
        Expression::String(a) => a.parse::<std::net::IpAddr>().ok().map(IpNet::from),
        _ => None,
    }
}

/// The name side of an `iifname`/`oifname` match as a borrowed string, if it is one.
pub fn name_of<'a>(e: &'a Expression) -> Option<&'a str> {
    match e {
        Expression::String(Cow::Borrowed(s)) => Some(s),
        Expression::String(Cow::Owned(s)) => Some(s.as_str()),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
