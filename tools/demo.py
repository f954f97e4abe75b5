"""The embedded demo (synthetic data, SSN training, evaluation): not built yet."""
import sys

if __name__ == '__main__':
    print('The environment is ready; the demo itself is not implemented yet (see the open issue).')
    sys.exit(0)
