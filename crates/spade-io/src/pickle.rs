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
    Tuple(Rc<Vec<Value>>),
    List(Shared<Vec<Value>>),
    /// Insertion ordered (Python dicts and OrderedDicts alike).
    Dict(Shared<Vec<(Value, Value)>>),
    Global {
        module: String,
        name: String,
    },
    Storage(Rc<StorageRef>),
    Tensor(Rc<TensorRef>),
    /// Any other constructed object: `callable(*args)` plus its BUILD state.
    Object {
        class: String,
        args: Rc<Vec<Value>>,
        state: Shared<Option<Value>>,
    },
}

impl Value {
    pub(crate) fn new_dict(items: Vec<(Value, Value)>) -> Self {
        Value::Dict(Rc::new(RefCell::new(items)))
    }

    pub(crate) fn new_list(items: Vec<Value>) -> Self {
        Value::List(Rc::new(RefCell::new(items)))
    }

    pub(crate) fn tuple(items: Vec<Value>) -> Self {
        Value::Tuple(Rc::new(items))
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
            Value::List(l) => format!("list of length {}", l.borrow().len()),
            Value::Dict(d) => format!("dict with {} entries", d.borrow().len()),
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

    /// Items of a tuple or list.
    pub(crate) fn items(&self) -> Option<Vec<Value>> {
        match self {
            Value::Tuple(t) => Some(t.as_ref().clone()),
            Value::List(l) => Some(l.borrow().clone()),
            _ => None,
        }
    }

    fn key_eq(&self, other: &Value) -> bool {
        match (self, other) {
            (Value::Str(a), Value::Str(b)) => a == b,
            (Value::Int(a), Value::Int(b)) => a == b,
            (Value::Bytes(a), Value::Bytes(b)) => a == b,
            _ => false,
        }
    }
}

/// Inserts into an ordered dict, replacing (in place) the value of an equal key.
fn dict_insert(items: &mut Vec<(Value, Value)>, key: Value, value: Value) {
    if let Some(slot) = items.iter_mut().find(|(k, _)| k.key_eq(&key)) {
        slot.1 = value;
    } else {
        items.push((key, value));
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
}

impl<R: Read, F: FnMut(Value) -> Result<Value, (String, String)>> Unpickler<R, F> {
    pub(crate) fn new(reader: R, persistent_load: F) -> Self {
        Self { reader, pos: 0, op_pos: 0, stack: Vec::new(), marks: Vec::new(), memo: HashMap::new(), persistent_load }
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

    fn set_items(&mut self, items: Vec<Value>) -> PResult<()> {
        if items.len() % 2 == 1 {
            return self.err("an even number of values for SETITEMS", items.len().to_string());
        }
        let target = self.top()?.clone();
        match target {
            Value::Dict(d) => {
                let mut d = d.borrow_mut();
                let mut it = items.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    dict_insert(&mut d, k, v);
                }
                Ok(())
            }
            other => self.err("a dict to set items on", other.describe()),
        }
    }

    fn append_items(&mut self, items: Vec<Value>) -> PResult<()> {
        let target = self.top()?.clone();
        match target {
            Value::List(l) => {
                l.borrow_mut().extend(items);
                Ok(())
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
                b'}' => self.stack.push(Value::new_dict(Vec::new())),
                b']' => self.stack.push(Value::new_list(Vec::new())),
                b')' => self.stack.push(Value::tuple(Vec::new())),
                // EMPTY_SET: sets become lists
                0x8f => self.stack.push(Value::new_list(Vec::new())),
                // TUPLE
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::tuple(items));
                }
                // TUPLE1..3
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        return self.err(format!("{n} values for TUPLE{n}"), "a shorter stack");
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.stack.push(Value::tuple(items));
                }
                // LIST, FROZENSET
                b'l' | 0x91 => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::new_list(items));
                }
                // DICT
                b'd' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::new_dict(Vec::new()));
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
                        Value::Object { state: slot, .. } => *slot.borrow_mut() = Some(state),
                        other => {
                            let found = other.describe();
                            return self.err("an object to BUILD", found);
                        }
                    }
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
                let dict = Value::new_dict(Vec::new());
                if let Some(init) = args.first() {
                    let pairs = match init {
                        Value::Dict(d) => d.borrow().clone(),
                        other => {
                            let Some(items) = other.items() else {
                                return self.err("OrderedDict initialised from pairs", other.describe());
                            };
                            let mut pairs = Vec::new();
                            for item in items {
                                match item.items().as_deref() {
                                    Some([k, v]) => pairs.push((k.clone(), v.clone())),
                                    _ => return self.err("a (key, value) pair", item.describe()),
                                }
                            }
                            pairs
                        }
                    };
                    if let Value::Dict(d) = &dict {
                        let mut d = d.borrow_mut();
                        for (k, v) in pairs {
                            dict_insert(&mut d, k, v);
                        }
                    }
                }
                Ok(dict)
            }
            ("torch", "Size") | ("builtins", "tuple") | ("__builtin__", "tuple") => {
                match args.first().and_then(Value::items) {
                    Some(items) => Ok(Value::tuple(items)),
                    None if args.is_empty() => Ok(Value::tuple(Vec::new())),
                    None => self.err("torch.Size(tuple)", format!("{} arguments", args.len())),
                }
            }
            ("torch._utils", "_rebuild_tensor")
            | ("torch._utils", "_rebuild_tensor_v2")
            | ("torch._utils", "_rebuild_tensor_v3") => self.rebuild_tensor(name, &args),
            ("torch._utils", "_rebuild_parameter")
            | ("torch._utils", "_rebuild_parameter_with_state")
            | ("torch.nn.parameter", "Parameter") => match args.first() {
                Some(v) => Ok(v.clone()),
                None => self.err(format!("arguments for {name}"), "none"),
            },
            // Tensor subclasses: `_rebuild_from_type_v2(func, new_type, args, state)`.
            ("torch._tensor", "_rebuild_from_type_v2") | ("torch._utils", "_rebuild_from_type_v2") => {
                match args.as_slice() {
                    [func, _new_type, inner, ..] => self.call(func.clone(), inner.clone()),
                    _ => self.err("4 arguments for _rebuild_from_type_v2", args.len().to_string()),
                }
            }
            _ => Ok(Value::Object { class: format!("{module}.{name}"), args, state: Rc::new(RefCell::new(None)) }),
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
