/*
 * The ovs-overlay CNI plugin as runtimes exec it: a shim that hands the request to the
 * host's agent and prints its answer.
 *
 * Why: runtimes exec the plugin for every verb (podman runs VERSION before each ADD and
 * DEL), and a Python plugin pays its interpreter's start on each exec: ~20 ms of an ADD,
 * and 28-36 ms of CPU per pod when ten pods start at once on two cores
 * (docs/benchmarks.md).  This shim costs about a millisecond.  It does not parse or judge
 * the request: it sends its CNI_* environment and stdin to the agent (op "cni"), which
 * runs the Python plugin's own code on them (controller/cni_gateway.py) and answers
 *
 *     "ovs-overlay-cni 1 <exit code>\n" then the bytes for stdout
 *
 * so the checks, results and errors are the plugin's, byte for byte, whichever way the
 * request came.  Anything else -- no agent on the socket, an agent that does not know
 * "cni" or answers "fallback" (an IPAM plugin to delegate to runs on the node, not in
 * the agent), a request too big -- and the shim execs the Python plugin installed beside
 * it (ovs-overlay-python) with the same environment and stdin, which then does
 * everything itself, errors included.  An agent that took the request and then said
 * nothing (timed out, closed) may have acted on it: the Python plugin is told so and
 * answers code 11 without asking again.
 *
 * The socket is the config's "agentSocket" when it is a plain string (found without a
 * JSON parser: an escaped or repeated key goes to the Python plugin), else the default.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#define DEFAULT_SOCKET "/run/ovs-overlay/agent.sock"
#define PYTHON_PLUGIN "ovs-overlay-python"
#define ANSWER_HEADER "ovs-overlay-cni 1 "
/* The agent reads at most 1 MiB per request (controller/api.py MAX_REQUEST): a bigger
 * request (escaping makes a control byte six) goes to the Python plugin instead. */
#define MAX_REQUEST (1 << 20)
#define MAX_STDIN (MAX_REQUEST / 2)
#define TIMEOUT_SECONDS 60 /* as the Python plugin's AGENT_TIMEOUT */

extern char **environ;

struct buf {
    char *data;
    size_t len, cap;
};

static void put(struct buf *b, const char *data, size_t n)
{
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n)
            cap *= 2;
        char *grown = realloc(b->data, cap);
        if (grown == NULL) {
            perror("ovs-overlay: out of memory");
            exit(1);
        }
        b->data = grown;
        b->cap = cap;
    }
    memcpy(b->data + b->len, data, n);
    b->len += n;
}

static void put_str(struct buf *b, const char *s) { put(b, s, strlen(s)); }

/* A JSON string of n bytes (control characters, quote and backslash escaped; other
 * bytes as they are: the agent decodes UTF-8 and refuses what is not). */
static void put_json_string(struct buf *b, const char *s, size_t n)
{
    put(b, "\"", 1);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            char esc[2] = {'\\', (char)c};
            put(b, esc, 2);
        } else if (c < 0x20) {
            char esc[7];
            snprintf(esc, sizeof esc, "\\u%04x", c);
            put(b, esc, 6);
        } else {
            put(b, (const char *)&s[i], 1);
        }
    }
    put(b, "\"", 1);
}

/* Exec the Python plugin beside this binary, stdin replayed from memory if read.  When
 * the agent took the request but gave no answer (silent: why), the plugin must not ask
 * again (an ADD may be under way): it answers as it does for an agent that does not
 * answer, code 11. */
static void __attribute__((noreturn)) fallback(char **argv, const struct buf *in,
                                               const char *silent)
{
    char self[PATH_MAX], path[PATH_MAX + sizeof PYTHON_PLUGIN + 1];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n > 0) {
        self[n] = '\0';
        char *slash = strrchr(self, '/');
        if (slash != NULL)
            *slash = '\0';
        snprintf(path, sizeof path, "%s/%s", self, PYTHON_PLUGIN);
    } else {
        snprintf(path, sizeof path, "%s", PYTHON_PLUGIN);
    }
    if (in != NULL) {
        int fd = memfd_create("cni-stdin", 0);
        if (fd < 0 || write(fd, in->data, in->len) != (ssize_t)in->len ||
            lseek(fd, 0, SEEK_SET) != 0 || dup2(fd, 0) < 0) {
            fprintf(stderr, "ovs-overlay: cannot hand stdin to %s: %s\n", path, strerror(errno));
            printf("{\"cniVersion\": \"1.1.0\", \"code\": 5, \"msg\": \"the ovs-overlay "
                   "plugin could not pass its stdin on (%s)\"}\n",
                   strerror(errno));
            exit(1);
        }
        if (fd != 0)
            close(fd);
    }
    if (silent != NULL)
        setenv("OVS_OVERLAY_CNI_AGENT_SILENT", silent, 1);
    argv[0] = path;
    execv(path, argv);
    fprintf(stderr, "ovs-overlay: cannot exec %s: %s\n", path, strerror(errno));
    printf("{\"cniVersion\": \"1.1.0\", \"code\": 5, \"msg\": \"the ovs-overlay plugin "
           "cannot run %s (%s); install it again with 'ovs-overlayctl install-cni'\"}\n",
           path, strerror(errno));
    exit(1);
}

/* The config's "agentSocket" into out; 0 if absent (default), -1 if not plain. */
static int agent_socket(const struct buf *in, char *out, size_t size)
{
    static const char key[] = "\"agentSocket\"";
    const char *end = in->data + in->len;
    const char *k = memmem(in->data, in->len, key, sizeof key - 1);
    if (k == NULL)
        return 0;
    const char *p = k + sizeof key - 1;
    if (memmem(p, (size_t)(end - p), key, sizeof key - 1) != NULL)
        return -1; /* more than one: only a JSON parser knows which is the top level's */
    while (p < end && *p != '\0' && strchr(" \t\r\n", *p))
        p++;
    if (p == end || *p++ != ':')
        return -1;
    while (p < end && *p != '\0' && strchr(" \t\r\n", *p))
        p++;
    if (p == end || *p++ != '"')
        return -1;
    const char *q = p;
    while (q < end && *q != '"' && *q != '\\' && (unsigned char)*q >= 0x20)
        q++;
    if (q == end || *q != '"' || (size_t)(q - p) >= size)
        return -1;
    memcpy(out, p, (size_t)(q - p));
    out[q - p] = '\0';
    return 1;
}

int main(int argc, char **argv)
{
    (void)argc;
    struct buf in = {0}, req = {0}, ans = {0};
    char chunk[65536];
    ssize_t n;
    if (!isatty(0)) {
        while ((n = read(0, chunk, sizeof chunk)) != 0) {
            if (n < 0) {
                if (errno == EINTR)
                    continue;
                fallback(argv, &in, NULL);
            }
            put(&in, chunk, (size_t)n);
        }
    }
    if (in.len == 0)
        put(&in, "", 0);
    if (in.len > MAX_STDIN)
        fallback(argv, &in, NULL); /* all of it read: the plugin gets it whole */

    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    int found = agent_socket(&in, addr.sun_path, sizeof addr.sun_path);
    if (found < 0)
        fallback(argv, &in, NULL);
    if (found == 0)
        snprintf(addr.sun_path, sizeof addr.sun_path, "%s", DEFAULT_SOCKET);

    int sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct timeval timeout = {.tv_sec = TIMEOUT_SECONDS};
    if (sock < 0 || setsockopt(sock, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout) < 0 ||
        setsockopt(sock, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout) < 0 ||
        connect(sock, (struct sockaddr *)&addr, sizeof addr) < 0)
        fallback(argv, &in, NULL);

    put_str(&req, "{\"op\": \"cni\", \"env\": {");
    int first = 1;
    for (char **e = environ; *e != NULL; e++) {
        char *eq = strchr(*e, '=');
        if (strncmp(*e, "CNI_", 4) != 0 || eq == NULL)
            continue;
        if (!first)
            put(&req, ", ", 2);
        first = 0;
        put_json_string(&req, *e, (size_t)(eq - *e));
        put(&req, ": ", 2);
        put_json_string(&req, eq + 1, strlen(eq + 1));
    }
    put_str(&req, "}, \"stdin\": ");
    put_json_string(&req, in.data, in.len);
    put(&req, "}", 1);
    if (req.len > MAX_REQUEST)
        fallback(argv, &in, NULL); /* more than the agent reads: it never saw it */

    for (size_t sent = 0; sent < req.len; sent += (size_t)n) {
        n = send(sock, req.data + sent, req.len - sent, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            n = 0;
        else if (n <= 0)
            fallback(argv, &in, NULL);
    }
    shutdown(sock, SHUT_WR);
    while ((n = recv(sock, chunk, sizeof chunk, 0)) != 0) {
        if (n < 0) {
            if (errno == EINTR)
                continue;
            fallback(argv, &in, strerror(errno));
        }
        put(&ans, chunk, (size_t)n);
    }
    close(sock);

    if (ans.len == 0) /* it read the request and died, or closed on it: it may have acted */
        fallback(argv, &in, "it closed the connection without an answer");
    size_t header = sizeof ANSWER_HEADER - 1;
    if (ans.len <= header || memcmp(ans.data, ANSWER_HEADER, header) != 0)
        fallback(argv, &in, NULL);
    char *p = ans.data + header, *end = ans.data + ans.len;
    int code = 0;
    while (p < end && *p >= '0' && *p <= '9' && code < 1000)
        code = code * 10 + (*p++ - '0');
    if (p == end || *p++ != '\n' || p == ans.data + header + 1)
        fallback(argv, &in, NULL);
    for (size_t done = 0, left = (size_t)(end - p); done < left; done += (size_t)n) {
        n = write(1, p + done, left - done);
        if (n < 0 && errno == EINTR)
            n = 0;
        else if (n <= 0)
            return 1;
    }
    return code;
}
