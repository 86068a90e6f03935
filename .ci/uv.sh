# Sourced by run-app, run-tests and .ci/run: sets UV to a working uv command, installing uv from
# PyPI with pip when it is not on PATH (a fresh machine has Python, not uv).
if command -v uv >/dev/null 2>&1; then
  UV=(uv)
else
  if ! python3 -m uv --version >/dev/null 2>&1; then
    python3 -m pip install --quiet --user uv 2>/dev/null || python3 -m pip install --quiet uv
  fi
  UV=(python3 -m uv)
fi
