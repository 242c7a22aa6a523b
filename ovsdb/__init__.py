"""The OVSDB client for one host: bridges, controller target, tunnel and endpoint ports."""

import warnings

# python-ovs's poller imports eventlet when it is installed (os-ken pulls it in), only to
# detect monkey-patching, which we never do; eventlet's import-time deprecation notice
# would otherwise be printed by every command.
warnings.filterwarnings("ignore", message="\\s*Eventlet is deprecated")
