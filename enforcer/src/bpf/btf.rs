//! Just enough of a BTF reader to find struct member offsets in `/sys/kernel/btf/vmlinux`.
//!
//! aya parses BTF too, but keeps member access private; the one maintained general-purpose
//! crate (btf-rs) is LGPL. The format is small and stable (`Documentation/bpf/btf.rst`), so
//! this reads the type section once and answers `struct.member.member` questions.
use std::{collections::HashMap, path::Path};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum BtfError {
    #[error("cannot read BTF from {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("BTF data is malformed: {0}")]
    Malformed(&'static str),
    #[error("kernel BTF has no struct {0}")]
    NoStruct(String),
    #[error("kernel BTF has no member {member} in struct {structure}")]
    NoMember { structure: String, member: String },
    #[error("{structure}.{member} is a bitfield, which enforcer cannot read")]
    Bitfield { structure: String, member: String },
}

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

#[derive(Debug, Clone)]
struct Type {
    kind: u32,
    name: u32,
    kind_flag: bool,
    /// Size for sized kinds, referenced type for the others.
    size_or_type: u32,
    members: Vec<RawMember>,
    /// For arrays: (element type, element count).
    array: Option<(u32, u32)>,
}

#[derive(Debug, Clone, Copy)]
struct RawMember {
    name: u32,
    ty: u32,
    offset: u32,
}

/// Where a member is, in bytes from the start of the outermost struct.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    pub offset: u32,
    pub size: u32,
}

pub struct Btf {
    /// Index `id - 1`; id 0 is void.
    types: Vec<Type>,
    strings: Vec<u8>,
    structs: HashMap<String, u32>,
}

fn u32_at(data: &[u8], at: usize) -> Result<u32, BtfError> {
    data.get(at..at + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])).ok_or(BtfError::Malformed("truncated"))
}

impl Btf {
    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Read { path: path.display().to_string(), source })?;
        Self::parse(&data)
    }

    /// Parses little-endian BTF (the only byte order of the machines enforcer runs on).
    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        if data.len() < 24 || data[0..2] != [0x9f, 0xeb] {
            return Err(BtfError::Malformed("bad magic"));
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let (type_off, type_len) = (u32_at(data, 8)? as usize, u32_at(data, 12)? as usize);
        let (str_off, str_len) = (u32_at(data, 16)? as usize, u32_at(data, 20)? as usize);
        let types_raw = data
            .get(hdr_len + type_off..hdr_len + type_off + type_len)
            .ok_or(BtfError::Malformed("type section out of bounds"))?;
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or(BtfError::Malformed("string section out of bounds"))?
            .to_vec();

        let mut types = Vec::new();
        let mut at = 0;
        while at < types_raw.len() {
            let name = u32_at(types_raw, at)?;
            let info = u32_at(types_raw, at + 4)?;
            let size_or_type = u32_at(types_raw, at + 8)?;
            at += 12;
            let (kind, vlen, kind_flag) = ((info >> 24) & 0x1f, (info & 0xffff) as usize, info >> 31 == 1);
            let mut ty = Type { kind, name, kind_flag, size_or_type, members: Vec::new(), array: None };
            match kind {
                KIND_INT | 14 | 17 => at += 4, // INT, VAR, DECL_TAG
                KIND_ARRAY => {
                    ty.array = Some((u32_at(types_raw, at)?, u32_at(types_raw, at + 8)?));
                    at += 12;
                }
                KIND_STRUCT | KIND_UNION => {
                    for _ in 0..vlen {
                        ty.members.push(RawMember {
                            name: u32_at(types_raw, at)?,
                            ty: u32_at(types_raw, at + 4)?,
                            offset: u32_at(types_raw, at + 8)?,
                        });
                        at += 12;
                    }
                }
                KIND_ENUM | 13 => at += 8 * vlen,    // ENUM, FUNC_PROTO
                15 | KIND_ENUM64 => at += 12 * vlen, // DATASEC, ENUM64
                2 | 7..=12 | 16 | 18 => {}
                _ => return Err(BtfError::Malformed("unknown type kind")),
            }
            types.push(ty);
        }
        let mut btf = Self { types, strings, structs: HashMap::new() };
        for (i, ty) in btf.types.iter().enumerate() {
            if ty.kind == KIND_STRUCT && ty.name != 0 {
                let name = btf.string(ty.name).to_owned();
                // The first definition wins; vmlinux has each kernel struct once.
                btf.structs.entry(name).or_insert(i as u32 + 1);
            }
        }
        Ok(btf)
    }

    fn string(&self, off: u32) -> &str {
        let rest = self.strings.get(off as usize..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or("")
    }

    fn ty(&self, id: u32) -> Result<&Type, BtfError> {
        id.checked_sub(1).and_then(|i| self.types.get(i as usize)).ok_or(BtfError::Malformed("type id out of range"))
    }

    /// Follows typedefs and qualifiers to the underlying type.
    fn resolve(&self, mut id: u32) -> Result<u32, BtfError> {
        for _ in 0..32 {
            match self.ty(id)?.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = self.ty(id)?.size_or_type
                }
                _ => return Ok(id),
            }
        }
        Err(BtfError::Malformed("type chain too long"))
    }

    fn size(&self, id: u32) -> Result<u32, BtfError> {
        let id = self.resolve(id)?;
        let ty = self.ty(id)?;
        Ok(match ty.kind {
            KIND_PTR => 8,
            KIND_ARRAY => {
                let (elem, n) = ty.array.ok_or(BtfError::Malformed("array"))?;
                self.size(elem)? * n
            }
            _ => ty.size_or_type,
        })
    }

    /// Finds `name` in the struct/union `id`, looking into anonymous members, and returns its
    /// bit offset and type.
    fn find(&self, id: u32, name: &str) -> Result<Option<(u32, u32, bool)>, BtfError> {
        let ty = self.ty(self.resolve(id)?)?;
        for m in &ty.members {
            let (bit_off, bitfield) =
                if ty.kind_flag { (m.offset & 0xff_ffff, m.offset >> 24 != 0) } else { (m.offset, false) };
            if m.name == 0 {
                let inner = self.resolve(m.ty)?;
                if matches!(self.ty(inner)?.kind, KIND_STRUCT | KIND_UNION)
                    && let Some((off, t, bf)) = self.find(inner, name)?
                {
                    return Ok(Some((bit_off + off, t, bf)));
                }
            } else if self.string(m.name) == name {
                return Ok(Some((bit_off, m.ty, bitfield)));
            }
        }
        Ok(None)
    }

    /// Byte offset and size of `path` (`member` or `member.member…`) inside struct `structure`.
    pub fn member(&self, structure: &str, path: &str) -> Result<Member, BtfError> {
        let mut id = *self.structs.get(structure).ok_or_else(|| BtfError::NoStruct(structure.to_owned()))?;
        let mut bits = 0;
        for part in path.split('.') {
            let no_member = || BtfError::NoMember { structure: structure.to_owned(), member: path.to_owned() };
            let (off, ty, bitfield) = self.find(id, part)?.ok_or_else(no_member)?;
            if bitfield || off % 8 != 0 {
                return Err(BtfError::Bitfield { structure: structure.to_owned(), member: path.to_owned() });
            }
            bits += off;
            id = ty;
        }
        Ok(Member { offset: bits / 8, size: self.size(id)? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hand-built BTF: `struct s { int a; union { long b; }; }`.
    fn sample() -> Vec<u8> {
        let strings = b"\0int\0long\0s\0a\0b\0".to_vec();
        let mut t = Vec::new();
        let mut push = |v: &[u32]| v.iter().for_each(|x| t.extend_from_slice(&x.to_le_bytes()));
        push(&[1, KIND_INT << 24, 4, 0x20]); // 1: int
        push(&[5, KIND_INT << 24, 8, 0x40]); // 2: long
        push(&[0, (KIND_UNION << 24) | 1, 8, 14, 2, 0]); // 3: union { long b; }
        push(&[10, (KIND_STRUCT << 24) | 2, 16, 12, 1, 0, 0, 3, 64]); // 4: struct s
        let mut out = vec![0x9f, 0xeb, 1, 0];
        out.extend_from_slice(&24u32.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&(t.len() as u32).to_le_bytes());
        out.extend_from_slice(&(t.len() as u32).to_le_bytes());
        out.extend_from_slice(&(strings.len() as u32).to_le_bytes());
        out.extend(t);
        out.extend(strings);
        out
    }

    #[test]
    fn finds_direct_and_anonymous_members() {
        let btf = Btf::parse(&sample()).expect("parse");
        assert_eq!(btf.member("s", "a").expect("a"), Member { offset: 0, size: 4 });
        assert_eq!(btf.member("s", "b").expect("b"), Member { offset: 8, size: 8 });
        assert!(matches!(btf.member("s", "c"), Err(BtfError::NoMember { .. })));
        assert!(matches!(btf.member("t", "a"), Err(BtfError::NoStruct(_))));
    }

    #[test]
    fn rejects_garbage() {
        assert!(Btf::parse(b"not btf at all, not at all").is_err());
        let mut truncated = sample();
        truncated.truncate(40);
        assert!(Btf::parse(&truncated).is_err());
    }
}
