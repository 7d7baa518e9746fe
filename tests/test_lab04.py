"""Lab 04's exercises: the stubs are TODO, the reference solutions pass, and a planted bug fails its exercise; the
script entry grades."""

from __future__ import annotations

from alignlab.lab import load_module

from .lab_check import assert_lab, lab_dir, run_check

PLANTED = {
    1: [("math.ceil(n / block_size)", "(n // block_size + 1)"),  # a full sequence gets one block too many
        ("full = prompt_len // block_size", "full = math.ceil(prompt_len / block_size)")],  # partial block shared
    2: [("pool.data[private] = list(pool.data[shared])", "pool.data[private] = pool.data[shared]"),  # an alias
        ("        pool.release(shared)\n", ""),  # the copied block is never given back
        ("pool.release(block)  # back", "pass  # back")],
    3: [("r = ranks[slot] if slot >= 0 else 0", "r = A.shape[1] if slot >= 0 else 0"),  # padded to r_max
        ("out[rows] = scaling[slot] * (h @", "out[rows] = (h @")],
    4: [("adapter))  # the parent's name", "None))  # the parent's name"),  # the adapter left out of the name
        ("if (i + 1) * block_size >= len(tokens):", "if (i + 1) * block_size > len(tokens):")],
    5: [('if cells[a] != "." and cells[a]', "if cells[a]"),  # three empty cells "win"
        ("/ math.log(100)", "/ math.log(10)")],
    6: [("/ (len(group) - 1))", "/ len(group))")],  # the biased std
    7: [("if key in have:", "if text in have:"),  # the playbook compared as written, not normalised
        ("first.setdefault(key, text)", "first[key] = text")],  # the last spelling, not the first
    8: [('return "".join(kept).strip(), calls', 'return "".join(kept), calls'),
        ('not isinstance(obj.get("name"), str)', '"name" not in obj'),  # a name that is not a string
        ("body, end = text[start + len(OPEN):], len(text)", "break")],  # an unclosed block ignored
}


def test_stubs_todo_solutions_pass_planted_bugs_fail(tmp_path):
    assert_lab(4, PLANTED, tmp_path)


def test_the_script_grades():
    r = run_check("04_tool_use", "6", "--module", str(lab_dir(4) / "solutions.py"))
    assert r.returncode == 0 and "exercise 6: PASS" in r.stdout, r.stdout + r.stderr


def test_parse_hermes_check_without_bfcl_says_it_skipped(tmp_path):
    check = load_module(lab_dir(4) / "check.py", "lab04_check_no_bfcl")
    check.BFCL = tmp_path / "bfcl"  # no data here
    detail = check.check_8(load_module(lab_dir(4) / "solutions.py", "lab04_solutions"))
    assert "skipped" in detail and "SOURCES.md" in detail, detail
