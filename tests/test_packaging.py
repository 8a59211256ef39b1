"""vit-fast must install and run beside other packages: its kernels live in `vit_fast.kernels`, never under a
top-level name that another distribution owns. The top-level `kernels` is Hugging Face's package (transformers 5.25
requires it); when this project shipped its own top-level `kernels`, `import transformers` failed beside it."""
import ast
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _python_files():
    for top in ("vit_fast", "benchmarks", "tests"):
        yield from sorted((ROOT / top).rglob("*.py"))
    yield ROOT / "setup.py"


def test_no_module_imports_a_top_level_kernels_package():
    offenders = []
    for path in _python_files():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            offenders += [f"{path.relative_to(ROOT)}:{node.lineno}" for n in names if n.split(".")[0] == "kernels"]
    assert not offenders, f"imports of the top-level `kernels` (Hugging Face's package, not ours): {offenders}"


def test_packages_installed_are_the_projects_own():
    """setup.py installs `vit_fast` (kernels included) and `benchmarks`, nothing else at the top level."""
    code = ("import setuptools, runpy, json, sys\n"
            "seen = {}\n"
            "setuptools.setup = lambda **kw: seen.update(kw)\n"
            "runpy.run_path('setup.py')\n"
            "print(json.dumps(sorted({p.split('.')[0] for p in seen['packages']})))\n")
    tops = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert tops.stdout.strip() == '["benchmarks", "vit_fast"]', tops.stdout
    assert (ROOT / "vit_fast" / "kernels" / "__init__.py").is_file()


def test_runs_with_another_top_level_kernels_package_first_on_the_path(tmp_path):
    """A stand-in for Hugging Face's `kernels`, first on sys.path, that fails when imported: the triton backend
    (interpreter), the FP8 emulation, validate's op checks and the static report's kernel discovery never touch it."""
    (tmp_path / "kernels").mkdir()
    (tmp_path / "kernels" / "__init__.py").write_text("raise ImportError('not vit-fast: a stand-in for HF kernels')\n")
    code = """
import sys, torch
import vit_fast
from vit_fast.numerics import MODEL_TOL
import vit_fast.fp8, vit_fast.validate.ops, vit_fast.validate.ops_fp8, vit_fast.triton_path
torch.manual_seed(0)
model = vit_fast.create('vit_b_16', img_size=(32, 48), embed_dim=64, depth=1, num_heads=2, mlp_dim=96,
                        num_classes=5, backend='torch')
x = torch.randn(2, 3, 32, 48)
ref = model(x)
model.set_backend('triton')
out = model(x)
atol, rtol = MODEL_TOL[torch.float32]
torch.testing.assert_close(out, ref, atol=atol, rtol=rtol)
sys.path.insert(0, 'tests/kernels')
import aot_compile  # after the run: it turns the interpreter off for the compiles it makes
failed = [(name, err) for name, _, err in aot_compile.discover() if err]
assert not failed, failed
assert 'kernels' not in sys.modules, sys.modules.get('kernels')
print('ok', vit_fast.kernels.__file__)
"""
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]))
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("ok ") and str(ROOT / "vit_fast" / "kernels") in proc.stdout, proc.stdout
