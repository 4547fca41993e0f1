//! A small pickle virtual machine (the subset of protocols 2-5 that `torch.save` emits) and a
//! matching writer.
//!
//! The reader builds a [`Value`] tree. Containers are shared (`Rc<RefCell<..>>`) so that objects
//! fetched from the memo see later mutations, as in Python. Torch-specific callables
//! (`_rebuild_tensor_v2`, `OrderedDict`, ...) are interpreted here; persistent ids (storages) are
//! handed to a caller-supplied function.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Read;
use std::rc::Rc;

/// Element types of torch storages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TorchDType {
    F64,
    F32,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
    /// `torch.UntypedStorage`: raw bytes.
    Untyped,
}

impl TorchDType {
    pub(crate) fn size(self) -> usize {
        match self {
            Self::F64 | Self::I64 => 8,
            Self::F32 | Self::I32 => 4,
            Self::F16 | Self::BF16 | Self::I16 => 2,
            Self::I8 | Self::U8 | Self::Bool | Self::Untyped => 1,
        }
    }

    /// From a storage class name such as `FloatStorage`.
    pub(crate) fn from_storage_class(module: &str, name: &str) -> Option<Self> {
        if !matches!(module, "torch" | "torch.cuda" | "torch.storage") {
            return None;
        }
        Some(match name {
            "DoubleStorage" => Self::F64,
            "FloatStorage" => Self::F32,
            "HalfStorage" => Self::F16,
            "BFloat16Storage" => Self::BF16,
            "LongStorage" => Self::I64,
            "IntStorage" => Self::I32,
            "ShortStorage" => Self::I16,
            "CharStorage" => Self::I8,
            "ByteStorage" => Self::U8,
            "BoolStorage" => Self::Bool,
            "UntypedStorage" | "_UntypedStorage" => Self::Untyped,
            _ => return None,
        })
    }

    /// From a `torch.<dtype>` global, as pickled for `_rebuild_tensor_v3`.
    pub(crate) fn from_torch_dtype(module: &str, name: &str) -> Option<Self> {
        if module != "torch" {
            return None;
        }
        Some(match name {
            "float64" | "double" => Self::F64,
            "float32" | "float" => Self::F32,
            "float16" | "half" => Self::F16,
            "bfloat16" => Self::BF16,
            "int64" | "long" => Self::I64,
            "int32" | "int" => Self::I32,
            "int16" | "short" => Self::I16,
            "int8" => Self::I8,
            "uint8" => Self::U8,
            "bool" => Self::Bool,
            _ => return None,
        })
    }

    pub(crate) fn storage_class(self) -> &'static str {
        match self {
            Self::F64 => "DoubleStorage",
            Self::F32 => "FloatStorage",
            Self::F16 => "HalfStorage",
            Self::BF16 => "BFloat16Storage",
            Self::I64 => "LongStorage",
            Self::I32 => "IntStorage",
            Self::I16 => "ShortStorage",
            Self::I8 => "CharStorage",
            Self::U8 => "ByteStorage",
            Self::Bool => "BoolStorage",
            Self::Untyped => "UntypedStorage",
        }
    }
}

/// A storage reference produced by a persistent id.
#[derive(Debug)]
pub(crate) struct StorageRef {
    /// Key of the root storage (zip: `data/<key>`; legacy: the key in the storage list).
    pub key: String,
    pub dtype: TorchDType,
    /// Element count declared in the persistent id (of the root storage).
    pub numel: usize,
    /// Legacy storage views: offset of the view into the root storage, in elements.
    pub view_offset: usize,
    /// Legacy storage views: element count of the view.
    pub view_numel: Option<usize>,
}

/// A tensor produced by `_rebuild_tensor*`.
#[derive(Debug)]
pub(crate) struct TensorRef {
    pub storage: Rc<StorageRef>,
    pub dtype: TorchDType,
    /// In elements of `dtype`, relative to the storage (view) start.
    pub offset: usize,
    pub size: Vec<usize>,
    pub stride: Vec<usize>,
}

pub(crate) type Shared<T> = Rc<RefCell<T>>;

/// Deepest nesting of containers the unpickler builds. `torch.save` of a state_dict nests a
/// handful of levels; a deeper pickle is refused before it is built.
pub(crate) const MAX_DEPTH: u32 = 256;

/// The items of a tuple, list or object argument list. Dropping is iterative (see
/// [`drop_values`]), so that a pickle nesting a million tuples cannot overflow the stack.
#[derive(Debug, Default)]
pub(crate) struct Items {
    pub items: Vec<Value>,
    /// Nesting depth: 1 + the deepest item (kept up to date on appends; see [`MAX_DEPTH`]).
    pub depth: u32,
}

impl Items {
    fn new(items: Vec<Value>) -> Self {
        let depth = 1 + items.iter().map(Value::depth).max().unwrap_or(0);
        Items { items, depth }
    }
}

impl std::ops::Deref for Items {
    type Target = Vec<Value>;
    fn deref(&self) -> &Vec<Value> {
        &self.items
    }
}

impl Drop for Items {
    fn drop(&mut self) {
        if !self.items.is_empty() {
            drop_values(std::mem::take(&mut self.items));
        }
    }
}

/// A hashable dict key (the key types whose equality the reader honours: str, int, bytes).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum DictKey {
    Str(String),
    Int(i64),
    Bytes(Vec<u8>),
}

impl DictKey {
    fn of(v: &Value) -> Option<DictKey> {
        match v {
            Value::Str(s) => Some(DictKey::Str(s.clone())),
            Value::Int(i) => Some(DictKey::Int(*i)),
            Value::Bytes(b) => Some(DictKey::Bytes(b.clone())),
            _ => None,
        }
    }
}

/// An insertion-ordered dict with a hash index (loading is linear in the number of keys).
#[derive(Debug, Default)]
pub(crate) struct DictItems {
    entries: Vec<(Value, Value)>,
    index: HashMap<DictKey, usize>,
    /// Nesting depth: 1 + the deepest key or value.
    pub depth: u32,
}

impl DictItems {
    /// Inserts, replacing (in place) the value of an equal key, as Python does.
    pub(crate) fn insert(&mut self, key: Value, value: Value) {
        self.depth = self.depth.max(1 + key.depth().max(value.depth()));
        match DictKey::of(&key) {
            Some(k) => match self.index.get(&k) {
                Some(&i) => self.entries[i].1 = value,
                None => {
                    self.index.insert(k, self.entries.len());
                    self.entries.push((key, value));
                }
            },
            None => self.entries.push((key, value)),
        }
    }

    /// The value under the string key `key`.
    pub(crate) fn get_str(&self, key: &str) -> Option<&Value> {
        self.index.get(&DictKey::Str(key.to_string())).map(|&i| &self.entries[i].1)
    }

    /// A copy of the (key, value) pairs.
    pub(crate) fn pairs(&self) -> Vec<(Value, Value)> {
        self.entries.clone()
    }
}

impl std::ops::Deref for DictItems {
    type Target = [(Value, Value)];
    fn deref(&self) -> &[(Value, Value)] {
        &self.entries
    }
}

impl Drop for DictItems {
    fn drop(&mut self) {
        if !self.entries.is_empty() {
            let entries = std::mem::take(&mut self.entries);
            drop_values(entries.into_iter().flat_map(|(k, v)| [k, v]).collect());
        }
    }
}

/// Drops values without recursion: containers whose last reference goes are emptied into a
/// work list instead of dropping their items recursively.
fn drop_values(mut work: Vec<Value>) {
    while let Some(v) = work.pop() {
        match v {
            Value::Tuple(rc) => {
                if let Ok(mut items) = Rc::try_unwrap(rc) {
                    work.append(&mut items.items);
                }
            }
            Value::List(rc) => {
                if let Ok(cell) = Rc::try_unwrap(rc) {
                    work.append(&mut cell.into_inner().items);
                }
            }
            Value::Dict(rc) => {
                if let Ok(cell) = Rc::try_unwrap(rc) {
                    let mut d = cell.into_inner();
                    for (k, v) in std::mem::take(&mut d.entries) {
                        work.push(k);
                        work.push(v);
                    }
                }
            }
            Value::Object { args, state, .. } => {
                if let Ok(mut items) = Rc::try_unwrap(args) {
                    work.append(&mut items.items);
                }
                if let Ok(cell) = Rc::try_unwrap(state) {
                    work.append(&mut cell.into_inner().items);
                }
            }
            _ => {}
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// Integers that do not fit in an i64: little-endian two's complement bytes.
    BigInt(Vec<u8>),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Rc<Items>),
    List(Shared<Items>),
    /// Insertion ordered (Python dicts and OrderedDicts alike).
    Dict(Shared<DictItems>),
    Global {
        module: String,
        name: String,
    },
    Storage(Rc<StorageRef>),
    Tensor(Rc<TensorRef>),
    /// Any other constructed object: `callable(*args)` plus its BUILD state (none or one item).
    Object {
        class: String,
        args: Rc<Items>,
        state: Shared<Items>,
    },
}

impl Value {
    pub(crate) fn new_dict(items: Vec<(Value, Value)>) -> Self {
        let mut d = DictItems::default();
        for (k, v) in items {
            d.insert(k, v);
        }
        Value::Dict(Rc::new(RefCell::new(d)))
    }

    pub(crate) fn new_list(items: Vec<Value>) -> Self {
        Value::List(Rc::new(RefCell::new(Items::new(items))))
    }

    pub(crate) fn tuple(items: Vec<Value>) -> Self {
        Value::Tuple(Rc::new(Items::new(items)))
    }

    /// Nesting depth of containers (0 for scalars), as recorded when they were built or last
    /// grown.
    pub(crate) fn depth(&self) -> u32 {
        match self {
            Value::Tuple(t) => t.depth,
            // A container being mutated right now (a list appended to itself) is borrowed:
            // its depth is then that of the target, which the caller already has.
            Value::List(l) => l.try_borrow().map(|l| l.depth).unwrap_or(MAX_DEPTH + 1),
            Value::Dict(d) => d.try_borrow().map(|d| d.depth).unwrap_or(MAX_DEPTH + 1),
            Value::Object { args, state, .. } => {
                1 + args.depth.max(state.try_borrow().map(|s| s.depth).unwrap_or(MAX_DEPTH + 1))
            }
            _ => 0,
        }
    }

    /// A short human-readable description, for error messages.
    pub(crate) fn describe(&self) -> String {
        match self {
            Value::None => "None".into(),
            Value::Bool(b) => format!("bool {b}"),
            Value::Int(i) => format!("int {i}"),
            Value::BigInt(b) => format!("{}-byte int", b.len()),
            Value::Float(f) => format!("float {f}"),
            Value::Str(s) if s.len() <= 60 => format!("str {s:?}"),
            Value::Str(s) => format!("str of {} chars", s.chars().count()),
            Value::Bytes(b) => format!("bytes of length {}", b.len()),
            Value::Tuple(t) => format!("tuple of length {}", t.len()),
            Value::List(l) => match l.try_borrow() {
                Ok(l) => format!("list of length {}", l.len()),
                Err(_) => "list".into(),
            },
            Value::Dict(d) => match d.try_borrow() {
                Ok(d) => format!("dict with {} entries", d.len()),
                Err(_) => "dict".into(),
            },
            Value::Global { module, name } => format!("global {module}.{name}"),
            Value::Storage(s) => format!("{:?} storage {:?}", s.dtype, s.key),
            Value::Tensor(t) => format!("{:?} tensor of shape {:?}", t.dtype, t.size),
            Value::Object { class, args, .. } => {
                format!("object {class}(...{} args)", args.len())
            }
        }
    }

    pub(crate) fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Bool(b) => Some(*b as i64),
            _ => None,
        }
    }

    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// Items of a tuple or list (a copy: use [`Value::item_count`] first where the count
    /// matters).
    pub(crate) fn items(&self) -> Option<Vec<Value>> {
        match self {
            Value::Tuple(t) => Some(t.items.clone()),
            Value::List(l) => l.try_borrow().ok().map(|l| l.items.clone()),
            _ => None,
        }
    }

    /// Number of items of a tuple or list.
    pub(crate) fn item_count(&self) -> Option<usize> {
        match self {
            Value::Tuple(t) => Some(t.len()),
            Value::List(l) => l.try_borrow().ok().map(|l| l.len()),
            _ => None,
        }
    }
}

/// Where and why unpickling failed.
#[derive(Debug)]
pub(crate) struct PickleError {
    /// Byte position (within the pickle stream) of the opcode being executed.
    pub pos: u64,
    pub expected: String,
    pub found: String,
}

type PResult<T> = Result<T, PickleError>;

/// Persistent-id resolvers receive the pid object and return the object it stands for or an
/// (expected, found) pair.
pub(crate) struct Unpickler<R: Read, F: FnMut(Value) -> Result<Value, (String, String)>> {
    reader: R,
    /// Bytes consumed so far.
    pos: u64,
    /// Position of the current opcode.
    op_pos: u64,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u64, Value>,
    persistent_load: F,
    /// Values placed into containers so far (see `charge`).
    cells: u64,
}

impl<R: Read, F: FnMut(Value) -> Result<Value, (String, String)>> Unpickler<R, F> {
    pub(crate) fn new(reader: R, persistent_load: F) -> Self {
        Self {
            reader,
            pos: 0,
            op_pos: 0,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            persistent_load,
            cells: 0,
        }
    }

    /// Bytes consumed so far (the STOP opcode included once `load` returned).
    pub(crate) fn position(&self) -> u64 {
        self.pos
    }

    fn err<T>(&self, expected: impl Into<String>, found: impl Into<String>) -> PResult<T> {
        Err(PickleError { pos: self.op_pos, expected: expected.into(), found: found.into() })
    }

    fn read_bytes(&mut self, n: usize) -> PResult<Vec<u8>> {
        let mut buf = Vec::new();
        let got = (&mut self.reader).take(n as u64).read_to_end(&mut buf).map_err(|e| PickleError {
            pos: self.pos,
            expected: format!("{n} more bytes"),
            found: format!("read error: {e}"),
        })?;
        self.pos += got as u64;
        if got != n {
            return self.err(format!("{n} bytes of opcode argument"), format!("end of stream after {got}"));
        }
        Ok(buf)
    }

    fn read_array<const N: usize>(&mut self) -> PResult<[u8; N]> {
        let mut buf = [0u8; N];
        match self.reader.read_exact(&mut buf) {
            Ok(()) => {
                self.pos += N as u64;
                Ok(buf)
            }
            Err(e) => self.err(format!("{N} bytes of opcode argument"), format!("end of stream or read error ({e})")),
        }
    }

    fn read_u8(&mut self) -> PResult<u8> {
        Ok(self.read_array::<1>()?[0])
    }

    fn read_u32(&mut self) -> PResult<u32> {
        Ok(u32::from_le_bytes(self.read_array()?))
    }

    fn read_u64(&mut self) -> PResult<u64> {
        Ok(u64::from_le_bytes(self.read_array()?))
    }

    fn read_len_u64(&mut self) -> PResult<usize> {
        let n = self.read_u64()?;
        usize::try_from(n).or_else(|_| self.err("a length that fits in memory", n.to_string()))
    }

    fn read_line(&mut self) -> PResult<String> {
        let mut line = Vec::new();
        loop {
            let b = self.read_u8()?;
            if b == b'\n' {
                break;
            }
            line.push(b);
        }
        Ok(String::from_utf8_lossy(&line).into_owned())
    }

    fn utf8(&self, bytes: Vec<u8>) -> PResult<String> {
        match String::from_utf8(bytes) {
            Ok(s) => Ok(s),
            Err(e) => self.err("a UTF-8 string", format!("invalid UTF-8 ({e})")),
        }
    }

    fn pop(&mut self) -> PResult<Value> {
        match self.stack.pop() {
            Some(v) => Ok(v),
            None => self.err("a value on the stack", "an empty stack"),
        }
    }

    fn top(&mut self) -> PResult<&mut Value> {
        if self.stack.is_empty() {
            return self.err("a value on the stack", "an empty stack");
        }
        Ok(self.stack.last_mut().unwrap())
    }

    /// Pops everything above the last mark, and the mark.
    fn pop_mark(&mut self) -> PResult<Vec<Value>> {
        let Some(m) = self.marks.pop() else {
            return self.err("a MARK on the stack", "no MARK");
        };
        if m > self.stack.len() {
            return self.err("the stack to hold the MARK'ed values", "a shorter stack");
        }
        Ok(self.stack.split_off(m))
    }

    fn memo_put(&mut self, idx: u64) -> PResult<()> {
        let v = self.top()?.clone();
        self.memo.insert(idx, v);
        Ok(())
    }

    fn memo_get(&mut self, idx: u64) -> PResult<()> {
        match self.memo.get(&idx) {
            Some(v) => {
                let v = v.clone();
                self.stack.push(v);
                Ok(())
            }
            None => self.err(format!("memo entry {idx}"), "no such entry"),
        }
    }

    /// Counts `n` values placed into containers against the budget: at most 2 per byte read
    /// plus 64 Ki. Every value costs at least one opcode byte except copies (`tuple(list)`,
    /// `OrderedDict(dict)`), so only a pickle that copies large containers again and again
    /// runs out, and memory stays a small multiple of the stream's length.
    fn charge(&mut self, n: usize) -> PResult<()> {
        self.cells = self.cells.saturating_add(n as u64);
        let budget = self.pos.saturating_mul(2).saturating_add(1 << 16);
        if self.cells > budget {
            return self.err(
                format!("at most {budget} container items after {} bytes (2 per byte + 65536)", self.pos),
                format!("{} items (a pickle that copies containers over and over)", self.cells),
            );
        }
        Ok(())
    }

    fn check_depth(&self, depth: u32) -> PResult<()> {
        if depth > MAX_DEPTH {
            return self.err(
                format!("containers nested at most {MAX_DEPTH} deep"),
                format!("nesting deeper than {MAX_DEPTH} levels"),
            );
        }
        Ok(())
    }

    /// Pushes a new tuple, list or dict after checking its depth and charging its items.
    fn push_container(&mut self, v: Value, n: usize) -> PResult<()> {
        self.charge(n)?;
        self.check_depth(v.depth())?;
        self.stack.push(v);
        Ok(())
    }

    fn set_items(&mut self, items: Vec<Value>) -> PResult<()> {
        if items.len() % 2 == 1 {
            return self.err("an even number of values for SETITEMS", items.len().to_string());
        }
        self.charge(items.len())?;
        let target = self.top()?.clone();
        match target {
            Value::Dict(d) => {
                if items.iter().any(|v| matches!(v, Value::Dict(x) if Rc::ptr_eq(x, &d))) {
                    return self.err("a dict that does not contain itself", "a dict set as its own key or value");
                }
                let depth = {
                    let mut dm = d.borrow_mut();
                    let mut it = items.into_iter();
                    while let (Some(k), Some(v)) = (it.next(), it.next()) {
                        dm.insert(k, v);
                    }
                    dm.depth
                };
                self.check_depth(depth)
            }
            other => self.err("a dict to set items on", other.describe()),
        }
    }

    fn append_items(&mut self, items: Vec<Value>) -> PResult<()> {
        self.charge(items.len())?;
        let target = self.top()?.clone();
        match target {
            Value::List(l) => {
                if items.iter().any(|v| matches!(v, Value::List(x) if Rc::ptr_eq(x, &l))) {
                    return self.err("a list that does not contain itself", "a list appended to itself");
                }
                let depth = 1 + items.iter().map(Value::depth).max().unwrap_or(0);
                let depth = {
                    let mut lm = l.borrow_mut();
                    lm.depth = lm.depth.max(depth);
                    lm.items.extend(items);
                    lm.depth
                };
                self.check_depth(depth)
            }
            other => self.err("a list to append to", other.describe()),
        }
    }

    /// Runs the pickle to its STOP opcode and returns the result.
    pub(crate) fn load(&mut self) -> PResult<Value> {
        loop {
            self.op_pos = self.pos;
            let op = self.read_u8()?;
            match op {
                // PROTO
                0x80 => {
                    let v = self.read_u8()?;
                    if v > 5 {
                        return self.err("pickle protocol <= 5", format!("protocol {v}"));
                    }
                }
                // FRAME
                0x95 => {
                    self.read_u64()?;
                }
                // STOP
                b'.' => {
                    let v = self.pop()?;
                    return Ok(v);
                }
                b'(' => self.marks.push(self.stack.len()),
                // POP
                b'0' => {
                    if self.marks.last() == Some(&self.stack.len()) {
                        self.marks.pop();
                    } else {
                        self.pop()?;
                    }
                }
                // POP_MARK
                b'1' => {
                    self.pop_mark()?;
                }
                // DUP
                b'2' => {
                    let v = self.top()?.clone();
                    self.stack.push(v);
                }
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                // BININT
                b'J' => {
                    let v = i32::from_le_bytes(self.read_array()?);
                    self.stack.push(Value::Int(v as i64));
                }
                // BININT1
                b'K' => {
                    let v = self.read_u8()?;
                    self.stack.push(Value::Int(v as i64));
                }
                // BININT2
                b'M' => {
                    let v = u16::from_le_bytes(self.read_array()?);
                    self.stack.push(Value::Int(v as i64));
                }
                // LONG1 / LONG4
                0x8a | 0x8b => {
                    let n = if op == 0x8a {
                        self.read_u8()? as usize
                    } else {
                        let n = i32::from_le_bytes(self.read_array()?);
                        if n < 0 {
                            return self.err("a non-negative LONG4 length", n.to_string());
                        }
                        n as usize
                    };
                    let bytes = self.read_bytes(n)?;
                    self.stack.push(long_from_bytes(bytes));
                }
                // INT (protocol 0): decimal, "00"/"01" for booleans
                b'I' => {
                    let line = self.read_line()?;
                    let v = match line.as_str() {
                        "00" => Value::Bool(false),
                        "01" => Value::Bool(true),
                        s => match s.parse::<i64>() {
                            Ok(i) => Value::Int(i),
                            Err(_) => return self.err("a decimal integer", format!("{s:?}")),
                        },
                    };
                    self.stack.push(v);
                }
                // LONG (protocol 0)
                b'L' => {
                    let line = self.read_line()?;
                    match line.trim_end_matches('L').parse::<i64>() {
                        Ok(i) => self.stack.push(Value::Int(i)),
                        Err(_) => return self.err("a decimal long fitting in i64", line),
                    }
                }
                // BINFLOAT (big-endian)
                b'G' => {
                    let v = f64::from_be_bytes(self.read_array()?);
                    self.stack.push(Value::Float(v));
                }
                // FLOAT (protocol 0)
                b'F' => {
                    let line = self.read_line()?;
                    match line.parse::<f64>() {
                        Ok(f) => self.stack.push(Value::Float(f)),
                        Err(_) => return self.err("a decimal float", line),
                    }
                }
                // BINUNICODE, SHORT_BINUNICODE, BINUNICODE8
                b'X' | 0x8c | 0x8d => {
                    let n = match op {
                        b'X' => self.read_u32()? as usize,
                        0x8c => self.read_u8()? as usize,
                        _ => self.read_len_u64()?,
                    };
                    let bytes = self.read_bytes(n)?;
                    let s = self.utf8(bytes)?;
                    self.stack.push(Value::Str(s));
                }
                // BINSTRING, SHORT_BINSTRING (Python 2 str; torch.load decodes them)
                b'T' | b'U' => {
                    let n = if op == b'T' {
                        let n = i32::from_le_bytes(self.read_array()?);
                        if n < 0 {
                            return self.err("a non-negative BINSTRING length", n.to_string());
                        }
                        n as usize
                    } else {
                        self.read_u8()? as usize
                    };
                    let bytes = self.read_bytes(n)?;
                    let s = String::from_utf8_lossy(&bytes).into_owned();
                    self.stack.push(Value::Str(s));
                }
                // BINBYTES, SHORT_BINBYTES, BINBYTES8, BYTEARRAY8
                b'B' | b'C' | 0x8e | 0x96 => {
                    let n = match op {
                        b'B' => self.read_u32()? as usize,
                        b'C' => self.read_u8()? as usize,
                        _ => self.read_len_u64()?,
                    };
                    let bytes = self.read_bytes(n)?;
                    self.stack.push(Value::Bytes(bytes));
                }
                b'}' => self.push_container(Value::new_dict(Vec::new()), 0)?,
                b']' => self.push_container(Value::new_list(Vec::new()), 0)?,
                b')' => self.push_container(Value::tuple(Vec::new()), 0)?,
                // EMPTY_SET: sets become lists
                0x8f => self.push_container(Value::new_list(Vec::new()), 0)?,
                // TUPLE
                b't' => {
                    let items = self.pop_mark()?;
                    let n = items.len();
                    self.push_container(Value::tuple(items), n)?;
                }
                // TUPLE1..3
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        return self.err(format!("{n} values for TUPLE{n}"), "a shorter stack");
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.push_container(Value::tuple(items), n)?;
                }
                // LIST, FROZENSET
                b'l' | 0x91 => {
                    let items = self.pop_mark()?;
                    let n = items.len();
                    self.push_container(Value::new_list(items), n)?;
                }
                // DICT
                b'd' => {
                    let items = self.pop_mark()?;
                    self.push_container(Value::new_dict(Vec::new()), 0)?;
                    self.set_items(items)?;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.set_items(vec![k, v])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.set_items(items)?;
                }
                b'a' => {
                    let v = self.pop()?;
                    self.append_items(vec![v])?;
                }
                // APPENDS, ADDITEMS
                b'e' | 0x90 => {
                    let items = self.pop_mark()?;
                    self.append_items(items)?;
                }
                // GLOBAL
                b'c' => {
                    let module = self.read_line()?;
                    let name = self.read_line()?;
                    self.stack.push(Value::Global { module, name });
                }
                // STACK_GLOBAL
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Value::Str(module), Value::Str(name)) => self.stack.push(Value::Global { module, name }),
                        (m, n) => {
                            return self
                                .err("two strings for STACK_GLOBAL", format!("{} and {}", m.describe(), n.describe()))
                        }
                    }
                }
                // REDUCE
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let v = self.call(callable, args)?;
                    self.stack.push(v);
                }
                // NEWOBJ
                0x81 => {
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    let v = self.call(cls, args)?;
                    self.stack.push(v);
                }
                // NEWOBJ_EX
                0x92 => {
                    let _kwargs = self.pop()?;
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    let v = self.call(cls, args)?;
                    self.stack.push(v);
                }
                // BUILD
                b'b' => {
                    let state = self.pop()?;
                    match self.top()? {
                        // OrderedDict's state is `{'_metadata': ...}` (module versions): ignored.
                        Value::Dict(_) | Value::Tensor(_) | Value::List(_) => {}
                        Value::Object { state: slot, .. } => {
                            if matches!(&state, Value::Object { state: s, .. } if Rc::ptr_eq(s, slot)) {
                                return self.err("an object whose state is not itself", "an object built with itself");
                            }
                            *slot.borrow_mut() = Items::new(vec![state]);
                        }
                        other => {
                            let found = other.describe();
                            return self.err("an object to BUILD", found);
                        }
                    }
                    let depth = self.top()?.depth();
                    self.check_depth(depth)?;
                }
                // BINPERSID
                b'Q' => {
                    let pid = self.pop()?;
                    let v = self.persistent(pid)?;
                    self.stack.push(v);
                }
                // PERSID
                b'P' => {
                    let pid = self.read_line()?;
                    let v = self.persistent(Value::Str(pid))?;
                    self.stack.push(v);
                }
                b'q' => {
                    let i = self.read_u8()? as u64;
                    self.memo_put(i)?;
                }
                b'r' => {
                    let i = self.read_u32()? as u64;
                    self.memo_put(i)?;
                }
                // PUT (protocol 0)
                b'p' => {
                    let line = self.read_line()?;
                    match line.parse::<u64>() {
                        Ok(i) => self.memo_put(i)?,
                        Err(_) => return self.err("a memo index", line),
                    }
                }
                // MEMOIZE
                0x94 => {
                    let i = self.memo.len() as u64;
                    self.memo_put(i)?;
                }
                b'h' => {
                    let i = self.read_u8()? as u64;
                    self.memo_get(i)?;
                }
                b'j' => {
                    let i = self.read_u32()? as u64;
                    self.memo_get(i)?;
                }
                // GET (protocol 0)
                b'g' => {
                    let line = self.read_line()?;
                    match line.parse::<u64>() {
                        Ok(i) => self.memo_get(i)?,
                        Err(_) => return self.err("a memo index", line),
                    }
                }
                other => {
                    return self.err("a supported pickle opcode", format!("opcode 0x{other:02x} ({:?})", other as char))
                }
            }
        }
    }

    fn persistent(&mut self, pid: Value) -> PResult<Value> {
        match (self.persistent_load)(pid) {
            Ok(v) => Ok(v),
            Err((expected, found)) => self.err(expected, found),
        }
    }

    /// Applies a callable (REDUCE / NEWOBJ).
    fn call(&mut self, callable: Value, args: Value) -> PResult<Value> {
        let Value::Global { module, name } = &callable else {
            return self.err("a global as callable", callable.describe());
        };
        let Value::Tuple(args) = args else {
            return self.err(format!("an argument tuple for {module}.{name}"), args.describe());
        };
        match (module.as_str(), name.as_str()) {
            ("collections", "OrderedDict") | ("builtins", "dict") | ("__builtin__", "dict") => {
                let mut pairs = Vec::new();
                if let Some(init) = args.items.first() {
                    match init {
                        Value::Dict(d) => {
                            let n = d.try_borrow().map(|d| d.len()).unwrap_or(0);
                            self.charge(2 * n)?;
                            pairs = d.try_borrow().map(|d| d.pairs()).unwrap_or_default();
                        }
                        other => {
                            let Some(n) = other.item_count() else {
                                return self.err("OrderedDict initialised from pairs", other.describe());
                            };
                            self.charge(2 * n)?;
                            for item in other.items().unwrap_or_default() {
                                match item.items().as_deref() {
                                    Some([k, v]) => pairs.push((k.clone(), v.clone())),
                                    _ => return self.err("a (key, value) pair", item.describe()),
                                }
                            }
                        }
                    }
                }
                let dict = Value::new_dict(pairs);
                self.check_depth(dict.depth())?;
                Ok(dict)
            }
            ("torch", "Size") | ("builtins", "tuple") | ("__builtin__", "tuple") => {
                match args.items.first().and_then(Value::item_count) {
                    Some(n) => {
                        self.charge(n)?;
                        let t = Value::tuple(args[0].items().unwrap_or_default());
                        self.check_depth(t.depth())?;
                        Ok(t)
                    }
                    None if args.is_empty() => Ok(Value::tuple(Vec::new())),
                    None => self.err("torch.Size(tuple)", format!("{} arguments", args.len())),
                }
            }
            ("torch._utils", "_rebuild_tensor")
            | ("torch._utils", "_rebuild_tensor_v2")
            | ("torch._utils", "_rebuild_tensor_v3") => self.rebuild_tensor(name, &args),
            ("torch._utils", "_rebuild_parameter")
            | ("torch._utils", "_rebuild_parameter_with_state")
            | ("torch.nn.parameter", "Parameter") => match args.items.first() {
                Some(v) => Ok(v.clone()),
                None => self.err(format!("arguments for {name}"), "none"),
            },
            // Tensor subclasses: `_rebuild_from_type_v2(func, new_type, args, state)`.
            ("torch._tensor", "_rebuild_from_type_v2") | ("torch._utils", "_rebuild_from_type_v2") => {
                match args.items.as_slice() {
                    [Value::Global { module: m, name: n }, ..] if n == "_rebuild_from_type_v2" => {
                        self.err("a rebuild function inside _rebuild_from_type_v2", format!("{m}.{n} again"))
                    }
                    [func, _new_type, inner, ..] => self.call(func.clone(), inner.clone()),
                    _ => self.err("4 arguments for _rebuild_from_type_v2", args.len().to_string()),
                }
            }
            _ => Ok(Value::Object {
                class: format!("{module}.{name}"),
                args,
                state: Rc::new(RefCell::new(Items::default())),
            }),
        }
    }

    fn usize_list(&self, v: &Value, what: &str) -> PResult<Vec<usize>> {
        let Some(items) = v.items() else {
            return self.err(format!("a tuple of ints for the tensor {what}"), v.describe());
        };
        items
            .iter()
            .map(|x| match x.as_int() {
                Some(i) if i >= 0 => Ok(i as usize),
                _ => self.err(format!("non-negative ints in the tensor {what}"), x.describe()),
            })
            .collect()
    }

    fn rebuild_tensor(&mut self, name: &str, args: &[Value]) -> PResult<Value> {
        let min = if name == "_rebuild_tensor_v3" { 7 } else { 4 };
        if args.len() < min {
            return self.err(format!("at least {min} arguments for {name}"), args.len().to_string());
        }
        let Value::Storage(storage) = &args[0] else {
            return self.err(format!("a storage as first argument of {name}"), args[0].describe());
        };
        let offset = match args[1].as_int() {
            Some(o) if o >= 0 => o as usize,
            _ => return self.err("a non-negative storage offset", args[1].describe()),
        };
        let size = self.usize_list(&args[2], "size")?;
        let stride = self.usize_list(&args[3], "stride")?;
        if size.len() != stride.len() {
            return self.err(format!("a stride of the same rank as the size {size:?}"), format!("{stride:?}"));
        }
        let dtype = if name == "_rebuild_tensor_v3" {
            match &args[6] {
                Value::Global { module, name } => match TorchDType::from_torch_dtype(module, name) {
                    Some(d) => d,
                    None => return self.err("a supported torch dtype", format!("{module}.{name}")),
                },
                other => return self.err("a torch dtype", other.describe()),
            }
        } else {
            storage.dtype
        };
        Ok(Value::Tensor(Rc::new(TensorRef { storage: storage.clone(), dtype, offset, size, stride })))
    }
}

fn long_from_bytes(bytes: Vec<u8>) -> Value {
    if bytes.is_empty() {
        return Value::Int(0);
    }
    if bytes.len() <= 8 {
        let neg = bytes[bytes.len() - 1] & 0x80 != 0;
        let mut buf = if neg { [0xffu8; 8] } else { [0u8; 8] };
        buf[..bytes.len()].copy_from_slice(&bytes);
        Value::Int(i64::from_le_bytes(buf))
    } else {
        Value::BigInt(bytes)
    }
}

/// Writes protocol-2 pickles (enough for state dicts).
#[derive(Default)]
pub(crate) struct PickleWriter {
    pub buf: Vec<u8>,
}

impl PickleWriter {
    pub(crate) fn new() -> Self {
        let mut w = Self::default();
        w.buf.extend_from_slice(&[0x80, 2]);
        w
    }

    pub(crate) fn op(&mut self, op: u8) -> &mut Self {
        self.buf.push(op);
        self
    }

    pub(crate) fn mark(&mut self) -> &mut Self {
        self.op(b'(')
    }

    pub(crate) fn global(&mut self, module: &str, name: &str) -> &mut Self {
        self.buf.push(b'c');
        let mut s = String::new();
        let _ = write!(s, "{module}\n{name}\n");
        self.buf.extend_from_slice(s.as_bytes());
        self
    }

    pub(crate) fn str(&mut self, s: &str) -> &mut Self {
        self.buf.push(b'X');
        self.buf.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(s.as_bytes());
        self
    }

    pub(crate) fn int(&mut self, v: i64) -> &mut Self {
        if (0..256).contains(&v) {
            self.buf.extend_from_slice(&[b'K', v as u8]);
        } else if (0..65536).contains(&v) {
            self.buf.push(b'M');
            self.buf.extend_from_slice(&(v as u16).to_le_bytes());
        } else if i32::try_from(v).is_ok() {
            self.buf.push(b'J');
            self.buf.extend_from_slice(&(v as i32).to_le_bytes());
        } else {
            self.buf.extend_from_slice(&[0x8a, 8]);
            self.buf.extend_from_slice(&v.to_le_bytes());
        }
        self
    }

    pub(crate) fn bool(&mut self, v: bool) -> &mut Self {
        self.op(if v { 0x88 } else { 0x89 })
    }

    /// MARK, ints, TUPLE.
    pub(crate) fn int_tuple(&mut self, vs: &[usize]) -> &mut Self {
        self.mark();
        for &v in vs {
            self.int(v as i64);
        }
        self.op(b't')
    }

    /// Appends STOP and returns the bytes.
    pub(crate) fn finish(mut self) -> Vec<u8> {
        self.buf.push(b'.');
        self.buf
    }
}
