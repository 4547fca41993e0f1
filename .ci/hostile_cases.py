#!/usr/bin/env python3
"""Issue 15's table, end to end: builds each hand-made hostile file and runs the `spade`
command a user would, then checks that it ends with exit status 1 and a message naming the
file (or the config key) within seconds and bounded memory. Usage: hostile_cases.py SPADE DIR"""
import os, struct, subprocess, sys, time, zipfile, zlib

SPADE, D = sys.argv[1], sys.argv[2]
os.makedirs(D, exist_ok=True)

"""Builds the hand-made hostile files of issue 15's table under /tmp/hostile/cases."""

def X(s):  # BINUNICODE
    b = s.encode(); return b"X" + struct.pack("<I", len(b)) + b

def I(v):
    if 0 <= v < 256: return b"K" + bytes([v])
    if 0 <= v < 65536: return b"M" + struct.pack("<H", v)
    if -2**31 <= v < 2**31: return b"J" + struct.pack("<i", v)
    return b"\x8a\x08" + struct.pack("<q", v)

def tensor(numel, offset, size, stride, cls="FloatStorage"):
    p = b"ctorch._utils\n_rebuild_tensor_v2\n("
    p += b"(" + X("storage") + b"ctorch\n" + cls.encode() + b"\n" + X("0") + X("cpu") + I(numel) + b"tQ"
    p += I(offset) + b"(" + b"".join(I(s) for s in size) + b"t(" + b"".join(I(s) for s in stride) + b"t\x89"
    p += b"ccollections\nOrderedDict\n)RtR"
    return p

def sd_pickle(numel, offset, size, stride):
    return b"\x80\x02}" + X("w") + tensor(numel, offset, size, stride) + b"s."

def write_zip(path, pkl, storages=(), pkl_deflate=False, data_deflate=False):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(zipfile.ZipInfo("archive/data.pkl"), pkl,
                   compress_type=zipfile.ZIP_DEFLATED if pkl_deflate else zipfile.ZIP_STORED)
        for k, b in storages:
            z.writestr(zipfile.ZipInfo(f"archive/data/{k}"), b,
                       compress_type=zipfile.ZIP_DEFLATED if data_deflate else zipfile.ZIP_STORED)

def legacy(pkl_obj, keys, raw):
    out = b"\x80\x02\x8a\x0a" + (0x1950a86a20f9469cfc6c).to_bytes(10, "little") + b"."
    out += b"\x80\x02" + I(1001) + b"."
    out += b"\x80\x02}" + X("little_endian") + b"\x88s."
    out += pkl_obj
    out += b"\x80\x02](" + b"".join(X(k) for k in keys) + b"e."
    out += raw
    return out

# 1. a dict that contains itself under state_dict
write_zip(f"{D}/self_dict.pth", b"\x80\x02}q\x00" + X("state_dict") + b"h\x00s.")
# 2. a tuple nested 3 million deep
write_zip(f"{D}/deep_tuple.pth", b"\x80\x02)" + b"\x85" * 3_000_000 + b".")
# 3. 2^40 elements over a 1-element storage, zip and legacy
write_zip(f"{D}/huge_numel.pth", sd_pickle(1, 0, [1 << 20, 1 << 20], [1 << 20, 1]), [("0", struct.pack("<f", 1))])
with open(f"{D}/huge_numel_legacy.pth", "wb") as f:
    f.write(legacy(sd_pickle(1, 0, [1 << 20, 1 << 20], [1 << 20, 1]), ["0"], struct.pack("<Q", 1) + struct.pack("<f", 1)))
# 4. strides whose offset sum overflows
write_zip(f"{D}/stride_overflow.pth", sd_pickle(4, 0, [2, 2], [2**63 - 1, 1]), [("0", struct.pack("<4f", 1, 2, 3, 4))])
# 5. a stride-0 view expanding a 4-byte storage to 2^30 elements
write_zip(f"{D}/stride0.pth", sd_pickle(1, 0, [1 << 30], [0]), [("0", struct.pack("<f", 1))])
# 6. a 2 MB file with a deflated entry of 2 GiB
numel = 1 << 29
co = zlib.compressobj(9, zlib.DEFLATED, -15)
chunk = b"\0" * (1 << 24)
comp = b"".join(co.compress(chunk) for _ in range((4 * numel) // len(chunk))) + co.flush()
crc = 0
for _ in range((4 * numel) // len(chunk)):
    crc = zlib.crc32(chunk, crc)
with zipfile.ZipFile(f"{D}/bomb.pth", "w") as z:
    z.writestr(zipfile.ZipInfo("archive/data.pkl"), sd_pickle(numel, 0, [numel], [1]))
# Append the deflated entry by hand (zipfile would inflate nothing, but needs the raw stream).
with open(f"{D}/bomb.pth", "r+b") as f:
    z = zipfile.ZipFile(f, "a")
    zi = zipfile.ZipInfo("archive/data/0")
    zi.compress_type = zipfile.ZIP_DEFLATED
    zi.file_size = 4 * numel
    zi.compress_size = len(comp)
    zi.CRC = crc
    z._writecheck(zi)
    zi.header_offset = z.fp.tell()
    zi.flag_bits = 0
    zi._compresslevel = None
    z.fp.write(zi.FileHeader(True))
    z.fp.write(comp)
    z.filelist.append(zi)
    z.NameToInfo[zi.filename] = zi
    z.start_dir = z.fp.tell()
    z._didModify = True
    z.close()
# 7. a small (deflated) pickle copying a million-item list 100 times through builtins.tuple
pkl = b"\x80\x02]q\x00(" + b"N" * 1_000_000 + b"e0" + b"cbuiltins\ntuple\nh\x00\x85R0" * 100 + b"N."
write_zip(f"{D}/copies.pth", pkl, pkl_deflate=True)
# 8. a pickle dict of 300,000 distinct keys
pkl = b"\x80\x02}(" + b"".join(X(f"k{i}") + I(i) for i in range(300_000)) + b"u."
write_zip(f"{D}/keys.pth", pkl)

def npy(arr_bytes, header):
    h = header.encode()
    h += b" " * ((64 - (10 + len(h) + 1) % 64) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(h)) + h + arr_bytes

# 9. an .npz whose Fortran-order sigma shape product overflows
with zipfile.ZipFile(f"{D}/sigma_overflow.npz", "w") as z:
    z.writestr("mu.npy", npy(struct.pack("<2d", 0, 1), "{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }"))
    z.writestr("sigma.npy", npy(b"\0" * 32, "{'descr': '<f8', 'fortran_order': True, 'shape': (4294967296, 4294967297), }"))
# valid stats for the fid command lines
with zipfile.ZipFile(f"{D}/ok.npz", "w") as z:
    z.writestr("mu.npy", npy(struct.pack("<4d", 0, 0, 0, 0), "{'descr': '<f8', 'fortran_order': False, 'shape': (4,), }"))
    z.writestr("sigma.npy", npy(struct.pack("<16d", *[1.0 if i % 5 == 0 else 0.0 for i in range(16)]),
                                "{'descr': '<f8', 'fortran_order': False, 'shape': (4, 4), }"))

def png(path, w, h, depth, color, idat):
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, color, 0, 0, 0))
                + chunk(b"IDAT", idat) + chunk(b"IEND", b""))

def folder(name):
    root = f"{D}/{name}"
    for sub in ["labels", "images"]:
        os.makedirs(f"{root}/{sub}", exist_ok=True)
    return root

# 10. a label PNG declaring 16384 x (2^31-1) RGBA16
r = folder("ds_rgba16")
png(f"{r}/labels/a.png", 16384, 2**31 - 1, 16, 6, zlib.compress(b"\0" * 1000))
png(f"{r}/images/a.png", 1, 1, 8, 2, zlib.compress(b"\0\0\0\0"))
# 11. a 0.9 MB label PNG of 30000 x 30000 zeros
r = folder("ds_30000")
co = zlib.compressobj(9)
row = b"\0" * 30001
idat = b"".join(co.compress(row) for _ in range(30000)) + co.flush()
png(f"{r}/labels/a.png", 30000, 30000, 8, 0, idat)
png(f"{r}/images/a.png", 1, 1, 8, 2, zlib.compress(b"\0\0\0\0"))

TINY = """data:
  dataset_mode: synthetic
  load_size: 32
  crop_size: 32
  synthetic_count: 16
model: {ngf: 4, ndf: 4, num_D: 1, n_layers_D: 2}
loss: {no_vgg_loss: true}
train: {batch_size: 2, niter: 100, save_latest_freq: 3, display_freq: 0, seed: 5}
"""
open(f"{D}/tiny.yaml", "w").write(TINY)


def run(args, wait=True):
    t0 = time.time()
    p = subprocess.Popen([SPADE] + args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         env={k: v for k, v in dict(os.environ, RAYON_NUM_THREADS="2").items() if k not in ("RUST_BACKTRACE", "RUST_LIB_BACKTRACE")})
    err = p.stderr.read().decode(errors="replace")
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    lines = [l for l in err.splitlines() if l.strip()]
    return p.returncode, time.time() - t0, ru.ru_maxrss // 1024, lines[-1] if lines else ""


rows, failed = [], False


def case(name, args, needle, max_s=20, max_mb=1024, status=1):
    global failed
    rc, secs, mb, msg = run(args)
    ok = rc == status and needle in msg and secs <= max_s and mb <= max_mb
    failed |= not ok
    rows.append(f"| {name} | {rc} | {secs:.2f} s | {mb} MB | {msg[:300]} |{'' if ok else ' FAILED'}")


for f in ["self_dict", "deep_tuple", "huge_numel", "huge_numel_legacy", "stride_overflow", "stride0", "bomb",
          "copies", "keys"]:
    case(f"{f}.pth", ["fid", "--weights", f"{D}/{f}.pth", f"{D}/ok.npz", f"{D}/ok.npz"], f"{D}/{f}.pth")
case("sigma_overflow.npz", ["fid", f"{D}/sigma_overflow.npz", f"{D}/sigma_overflow.npz"], f"{D}/sigma_overflow.npz")
case("label 16384 x (2^31-1) RGBA16", ["dataset", "check", "--format", "folder", "--root", f"{D}/ds_rgba16", "--no-instance"],
     f"{D}/ds_rgba16/labels/a.png")
case("label 30000 x 30000 zeros", ["dataset", "check", "--format", "folder", "--root", f"{D}/ds_30000", "--no-instance"],
     f"{D}/ds_30000/labels/a.png")
for s, key in [("train.batch_size=0", "train.batch_size = 0"), ("model.init_variance=.inf", "model.init_variance = inf"),
               ("model.num_D=0", "model.num_D = 0")]:
    case(f"--set {s}", ["train", "--quiet", "--config", f"{D}/tiny.yaml", "--output-dir", f"{D}/never", "--set", s], key)
# Leftover checkpoints and no `latest`, then a 1-iteration run, then --resume.
left = f"{D}/left"
subprocess.run(["rm", "-rf", left, f"{D}/two"], check=True)
assert run(["train", "--quiet", "--config", f"{D}/tiny.yaml", "--output-dir", left, "--max-iters", "6"])[0] == 0
os.remove(f"{left}/latest")
case("leftover checkpoints, no latest: a fresh 1-iteration run", ["train", "--quiet", "--config", f"{D}/tiny.yaml",
     "--output-dir", left, "--max-iters", "1"], left)
case("... then --resume", ["train", "--quiet", "--config", f"{D}/tiny.yaml", "--output-dir", left, "--max-iters", "9",
     "--resume"], "", max_s=60, status=0)
kept = sorted(os.listdir(f"{left}/checkpoints"))
latest = open(f"{left}/latest").read().strip()
rows.append(f"|   checkpoints after the resume: {kept}, latest = {latest} | | | | |")
failed |= kept != ["iter_00000006", "iter_00000009"] or latest != "iter_00000009"
# Two trainings into the same directory at once.
first = subprocess.Popen([SPADE, "train", "--quiet", "--config", f"{D}/tiny.yaml", "--output-dir", f"{D}/two",
                          "--max-iters", "100000"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
t0 = time.time()
while not (os.path.exists(f"{D}/two/.lock") and open(f"{D}/two/.lock").read().strip() == str(first.pid)):
    assert time.time() - t0 < 60, "the first run never took the lock"
    time.sleep(0.05)
case(f"a second train into the same directory (the first is PID {first.pid})",
     ["train", "--quiet", "--config", f"{D}/tiny.yaml", "--output-dir", f"{D}/two", "--max-iters", "5"],
     f"process {first.pid}")
first.kill()
first.wait()
print("| case | exit status | time | peak RSS | message |\n|---|---|---|---|---|")
print("\n".join(rows))
sys.exit(1 if failed else 0)
