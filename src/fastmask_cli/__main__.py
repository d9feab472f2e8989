from .cli import app

if __name__ == "__main__":  # not again in a spawned worker process
    app(prog_name="fastmask")
