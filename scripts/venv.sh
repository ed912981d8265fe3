# Sourced, not run: ensure_venv, the one way our scripts build a Python venv
# from a pinned requirements file (catalog/generate.sh, deploy/validate.sh).
#
#   ensure_venv LABEL VENV REQUIREMENTS STAMP EXECUTABLE OVERRIDE_VAR
#
# Builds VENV from REQUIREMENTS unless VENV/bin/EXECUTABLE exists and STAMP
# (a copy of REQUIREMENTS, written last, so an interrupted install is redone)
# matches it. One builder at a time: an flock on VENV.lock, held on fd 9
# until the build is done (CI's check and a test may start together). A
# rebuild starts from scratch (--clear) so no package from older pins
# lingers, but never clears a directory that is not a venv; OVERRIDE_VAR
# names the variable that moves it elsewhere. Messages start with LABEL.

ensure_venv() {
    local label=$1 venv=$2 requirements=$3 stamp=$4 executable=$5 override=$6
    mkdir -p "$(dirname "$venv")"
    exec 9>"$venv.lock"
    flock 9
    if [ ! -x "$venv/bin/$executable" ] || ! cmp -s "$requirements" "$stamp"; then
        if [ -e "$venv" ] && [ ! -f "$venv/pyvenv.cfg" ]; then
            echo "$label: $venv exists and is not a venv; set $override elsewhere" >&2
            exit 1
        fi
        python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))' ||
            { echo "$label: python3 3.10 or newer is needed" >&2; exit 1; }
        echo "$label: installing $requirements into $venv" >&2
        python3 -m venv --clear "$venv"
        "$venv/bin/pip" install --disable-pip-version-check -q -r "$requirements"
        cp "$requirements" "$stamp"
    fi
    flock -u 9
}
