"""Build hook: compile the BPF objects with clang before packaging them.

The objects are package data (src/bpfgate/objects/*.o); at run time only libbpf.so.1 is needed.
"""
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildWithBpf(build_py):
    def run(self):
        root = Path(__file__).parent
        subprocess.run(["make", "-C", str(root / "bpf")], check=True)
        super().run()


setup(cmdclass={"build_py": BuildWithBpf})
