# Sourced by the scripts: cargo on PATH, mpirun allowed as root, a Python that has pyarrow.
export PATH="$HOME/.cargo/bin:$PATH"
if [ "$(id -u)" = 0 ]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
chatspace_python() {
  # Prints a python with pyarrow, Hugging Face datasets, tokenizers, polars and duckdb (the tests read outputs
  # with them, run the README's reading snippets and compare token ids), making a venv under target/ if the
  # system one lacks them.
  local venv="$1/target/pyvenv"
  if python3 -c "import pyarrow, datasets, tokenizers, polars, duckdb" >/dev/null 2>&1; then command -v python3; return; fi
  if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import pyarrow, datasets, tokenizers, polars, duckdb" >/dev/null 2>&1; then
    [ -x "$venv/bin/python" ] || python3 -m venv "$venv" >&2
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check pyarrow datasets tokenizers polars duckdb >&2
  fi
  echo "$venv/bin/python"
}
