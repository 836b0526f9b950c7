"""Reading what users type: shared by the launcher, the engine and the tasks (imports nothing heavy)."""


def is_number(text: str) -> bool:
    """True for "-1", "0.5", "1e-3", "nan": text that Python's float() reads."""
    try:
        float(text)
    except ValueError:
        return False
    return True
