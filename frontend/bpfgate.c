/* The `bpfgate` command in front of the Python CLI.
 *
 * While a `bpfgate agent` runs, the edit commands it answers (rule add|del, set add|del: client.CLI_EDITS)
 * are sent to its unix socket as they are, from here: the agent parses the command line with the CLI's own
 * click command, does the edit with the engines it holds, and sends back what to print and the exit code
 * (agent/api.py, run_cli). That is the Python client's request (agent/client.py, run_cli), made without
 * starting Python: the interpreter's start alone is ~10 ms, the agent's answer 1-2 ms.
 *
 * Everything else, and anything this front end is not sure of (no agent, another form of the command, an
 * answer the agent leaves to the caller), runs the Python CLI with the same arguments: `bpfgate-py`, the
 * console script installed beside this program. Once a request is sent it is never sent again: what went
 * wrong after that is reported here as the Python client reports it (an edit must not be done twice). */

#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#define PYTHON_CLI "bpfgate-py"
#define DEFAULT_AGENT_DIR "/run/bpfgate/agent"
#define NO_ANSWER "no answer in %g s: the agent is busy (reconciling) (try again, or raise BPFGATE_AGENT_WAIT)"

/* the commands a running agent answers, by their first two words, and the operation each does there
 * (agent/client.py CLI_EDITS: the names its errors use) */
static const char *const EDITS[][3] = {
	{"rule", "add", "add_rule"},
	{"rule", "del", "delete_rule"},
	{"set", "add", "set_add"},
	{"set", "del", "set_delete"},
};

static char **g_argv;

/* The Python CLI with this command line; returns only if it cannot be run. */
static int run_python(void)
{
	char self[PATH_MAX], path[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);

	if (n > 0) {
		self[n] = '\0';
		char *slash = strrchr(self, '/');
		if (slash && (size_t)snprintf(path, sizeof(path), "%.*s/%s", (int)(slash - self), self,
					      PYTHON_CLI) < sizeof(path)) {
			execv(path, g_argv);
			fprintf(stderr, "bpfgate: error: run the Python CLI %s: %s (reinstall bpfgate: "
				"pip install, or scripts/run)\n", path, strerror(errno));
			return 1;
		}
	}
	fprintf(stderr, "bpfgate: error: find the Python CLI beside this program: /proc/self/exe: %s\n",
		strerror(errno));
	return 1;
}

/* ---- output, as cli/term.py writes it ---- */

/* whether Rich would colour this stream (term._colour) */
static bool colour(int fd)
{
	const char *force = getenv("FORCE_COLOR"), *no = getenv("NO_COLOR"), *term = getenv("TERM");

	if (force && *force)
		return true;
	if ((no && *no) || (term && (!strcasecmp(term, "dumb") || !strcasecmp(term, "unknown"))))
		return false;
	return isatty(fd);
}

static void write_all(int fd, const char *buf, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, buf, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return;
		buf += n;
		len -= (size_t)n;
	}
}

/* term.error: "bpfgate: error:" (red on a colour terminal), then the message on one line */
static void print_error(const char *msg)
{
	size_t len = strlen(msg), o = 0;
	char *line = malloc(len + 1);
	bool gap = false;

	if (!line)
		return;
	for (size_t i = 0; i < len;) {   /* the lines, stripped, the empty ones left out, joined by a space */
		size_t end = i;
		while (end < len && msg[end] != '\n' && msg[end] != '\r')
			end++;
		size_t a = i, b = end;
		while (a < b && strchr(" \t\v\f", msg[a]))
			a++;
		while (b > a && strchr(" \t\v\f", msg[b - 1]))
			b--;
		if (b > a) {
			if (gap)
				line[o++] = ' ';
			memcpy(line + o, msg + a, b - a);
			o += b - a;
			gap = true;
		}
		i = end + 1;
	}
	line[o] = '\0';
	if (colour(2))
		dprintf(2, "\x1b[31mbpfgate: error:\x1b[0m %s\n", line);
	else
		dprintf(2, "bpfgate: error: %s\n", line);
	free(line);
}

/* ---- JSON: the request written, the reply read ---- */

struct buf {
	char *p;
	size_t len, cap;
};

static void put(struct buf *b, const char *s, size_t n)
{
	if (b->len + n + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 4096;
		while (b->len + n + 1 > cap)
			cap *= 2;
		char *p = realloc(b->p, cap);
		if (!p) {
			fprintf(stderr, "bpfgate: error: out of memory\n");
			exit(1);
		}
		b->p = p;
		b->cap = cap;
	}
	memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = '\0';
}

static void puts_(struct buf *b, const char *s) { put(b, s, strlen(s)); }

/* whether s is UTF-8 (what Python decodes an argument as; anything else: the Python CLI) */
static bool utf8(const unsigned char *s)
{
	while (*s) {
		int n = *s < 0x80 ? 0 : (*s & 0xe0) == 0xc0 ? 1 : (*s & 0xf0) == 0xe0 ? 2 : (*s & 0xf8) == 0xf0 ? 3 : -1;
		if (n < 0 || (n == 1 && *s < 0xc2))
			return false;
		s++;
		for (; n > 0; n--, s++)
			if ((*s & 0xc0) != 0x80)
				return false;
	}
	return true;
}

static void put_string(struct buf *b, const char *s)
{
	put(b, "\"", 1);
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		char esc[8];
		if (c == '"' || c == '\\') {
			esc[0] = '\\';
			esc[1] = (char)c;
			put(b, esc, 2);
		} else if (c < 0x20) {
			snprintf(esc, sizeof(esc), "\\u%04x", c);
			put(b, esc, 6);
		} else {
			put(b, s, 1);
		}
	}
	put(b, "\"", 1);
}

enum kind { J_NULL, J_BOOL, J_NUM, J_STR, J_ARR, J_OBJ };

struct json {
	enum kind kind;
	bool truth;
	double num;
	char *str;          /* J_STR: UTF-8, NUL-terminated (a \u0000 inside ends it early: not in our replies) */
	size_t n;           /* J_ARR, J_OBJ: members */
	char **keys;        /* J_OBJ */
	struct json **vals;
};

struct parser {
	const char *s;
	int depth;
};

static void ws(struct parser *p)
{
	while (*p->s == ' ' || *p->s == '\t' || *p->s == '\n' || *p->s == '\r')
		p->s++;
}

static int hex4(const char *s)
{
	int v = 0;
	for (int i = 0; i < 4; i++) {
		char c = s[i];
		v <<= 4;
		if (c >= '0' && c <= '9')
			v |= c - '0';
		else if (c >= 'a' && c <= 'f')
			v |= c - 'a' + 10;
		else if (c >= 'A' && c <= 'F')
			v |= c - 'A' + 10;
		else
			return -1;
	}
	return v;
}

static void put_utf8(struct buf *b, uint32_t cp)
{
	char u[4];
	if (cp < 0x80) {
		u[0] = (char)cp;
		put(b, u, 1);
	} else if (cp < 0x800) {
		u[0] = (char)(0xc0 | cp >> 6);
		u[1] = (char)(0x80 | (cp & 0x3f));
		put(b, u, 2);
	} else if (cp < 0x10000) {
		u[0] = (char)(0xe0 | cp >> 12);
		u[1] = (char)(0x80 | (cp >> 6 & 0x3f));
		u[2] = (char)(0x80 | (cp & 0x3f));
		put(b, u, 3);
	} else {
		u[0] = (char)(0xf0 | cp >> 18);
		u[1] = (char)(0x80 | (cp >> 12 & 0x3f));
		u[2] = (char)(0x80 | (cp >> 6 & 0x3f));
		u[3] = (char)(0x80 | (cp & 0x3f));
		put(b, u, 4);
	}
}

static char *parse_string(struct parser *p)
{
	struct buf b = {0};

	if (*p->s != '"')
		return NULL;
	p->s++;
	put(&b, "", 0);
	while (*p->s != '"') {
		const char *s = p->s;
		if (!*s || (unsigned char)*s < 0x20)
			goto bad;
		if (*s != '\\') {
			const char *e = s;
			while (*e && *e != '"' && *e != '\\' && (unsigned char)*e >= 0x20)
				e++;
			put(&b, s, (size_t)(e - s));
			p->s = e;
			continue;
		}
		char c = s[1];
		const char *simple = strchr("\"\\/bfnrt", c);
		if (c && simple) {
			put(&b, &"\"\\/\b\f\n\r\t"[simple - "\"\\/bfnrt"], 1);
			p->s += 2;
		} else if (c == 'u') {
			int hi = hex4(s + 2);
			uint32_t cp = (uint32_t)hi;
			p->s += 6;
			if (hi < 0)
				goto bad;
			if (hi >= 0xd800 && hi < 0xdc00 && p->s[0] == '\\' && p->s[1] == 'u') {
				int lo = hex4(p->s + 2);
				if (lo >= 0xdc00 && lo < 0xe000) {
					cp = 0x10000 + (((uint32_t)hi - 0xd800) << 10) + ((uint32_t)lo - 0xdc00);
					p->s += 6;
				}
			}
			if (cp >= 0xd800 && cp < 0xe000)
				cp = 0xfffd;   /* a lone surrogate: not text a terminal shows */
			put_utf8(&b, cp);
		} else {
			goto bad;
		}
	}
	p->s++;
	return b.p;
bad:
	free(b.p);
	return NULL;
}

static struct json *parse_value(struct parser *p);

static struct json *parse_members(struct parser *p, struct json *v, char close, bool keyed)
{
	p->s++;
	ws(p);
	if (*p->s == close) {
		p->s++;
		return v;
	}
	for (;;) {
		char *key = NULL;
		ws(p);
		if (keyed) {
			key = parse_string(p);
			ws(p);
			if (!key || *p->s != ':')
				return NULL;
			p->s++;
		}
		struct json *m = parse_value(p);
		if (!m)
			return NULL;
		v->keys = realloc(v->keys, (v->n + 1) * sizeof(*v->keys));
		v->vals = realloc(v->vals, (v->n + 1) * sizeof(*v->vals));
		if (!v->keys || !v->vals)
			return NULL;
		v->keys[v->n] = key;
		v->vals[v->n++] = m;
		ws(p);
		if (*p->s == ',') {
			p->s++;
			continue;
		}
		if (*p->s != close)
			return NULL;
		p->s++;
		return v;
	}
}

static struct json *parse_value(struct parser *p)
{
	struct json *v = calloc(1, sizeof(*v));

	if (!v || ++p->depth > 64)
		return NULL;
	ws(p);
	switch (*p->s) {
	case '{':
		v->kind = J_OBJ;
		v = parse_members(p, v, '}', true);
		break;
	case '[':
		v->kind = J_ARR;
		v = parse_members(p, v, ']', false);
		break;
	case '"':
		v->kind = J_STR;
		v->str = parse_string(p);
		if (!v->str)
			v = NULL;
		break;
	case 't':
	case 'f':
	case 'n': {
		static const char *const words[] = {"true", "false", "null"};
		for (int i = 0; i < 3; i++)
			if (!strncmp(p->s, words[i], strlen(words[i]))) {
				v->kind = i < 2 ? J_BOOL : J_NULL;
				v->truth = i == 0;
				p->s += strlen(words[i]);
				goto done;
			}
		v = NULL;
		break;
	}
	default: {
		char *end;
		errno = 0;
		v->kind = J_NUM;
		v->num = strtod(p->s, &end);
		if (end == p->s || errno)
			v = NULL;
		p->s = end;
	}
	}
done:
	p->depth--;
	return v;   /* what a failed parse allocated is left to the process's exit */
}

static struct json *member(const struct json *obj, const char *key)
{
	if (!obj || obj->kind != J_OBJ)
		return NULL;
	for (size_t i = 0; i < obj->n; i++)
		if (!strcmp(obj->keys[i], key))
			return obj->vals[i];
	return NULL;
}

static const char *text(const struct json *v)
{
	return v && v->kind == J_STR ? v->str : NULL;
}

/* ---- the agent's socket ---- */

/* an error of a request the agent was sent (client._call's), as the Python client prints it */
static int failed(const char *op, const char *fmt, ...)
{
	char cause[512], msg[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(cause, sizeof(cause), fmt, ap);
	va_end(ap);
	snprintf(msg, sizeof(msg), "%s through the bpfgate agent: %s", op, cause);
	print_error(msg);
	return 1;
}

/* The command line of an edit an agent may answer: its operation's name, and its --netns (NULL: the
 * host's) in *netns; NULL for any other command, --help, `--`, a --netns without a name (cli/entry.py
 * edit_args: a guess, the agent checks it against what click parses). */
static const char *edit_of(int argc, char **argv, const char **netns)
{
	const char *op = NULL;

	*netns = NULL;
	if (argc < 3)
		return NULL;
	for (size_t i = 0; i < sizeof(EDITS) / sizeof(EDITS[0]); i++)
		if (!strcmp(argv[1], EDITS[i][0]) && !strcmp(argv[2], EDITS[i][1]))
			op = EDITS[i][2];
	for (int i = 3; op && i < argc; i++) {
		const char *a = argv[i];
		if (!strcmp(a, "--help") || !strcmp(a, "-h") || !strcmp(a, "--"))
			return NULL;
		if (!strcmp(a, "--netns")) {
			*netns = i + 1 < argc ? argv[++i] : NULL;
			if (!*netns || !**netns || **netns == '-')
				return NULL;
		} else if (!strncmp(a, "--netns=", 8)) {
			*netns = a + 8;
			if (!**netns)
				return NULL;
		}
	}
	return op;
}

int main(int argc, char **argv)
{
	const char *netns, *op, *dir = getenv("BPFGATE_AGENT_DIR"), *wait_env = getenv("BPFGATE_AGENT_WAIT");
	struct sockaddr_un addr = {.sun_family = AF_UNIX};
	double wait_s = 30;
	char *end;

	g_argv = argv;
	op = edit_of(argc, argv, &netns);
	if (!op)
		return run_python();
	for (int i = 1; i < argc; i++)
		if (!utf8((const unsigned char *)argv[i]))
			return run_python();
	if (netns && (strchr(netns, '/') || !strcmp(netns, ".") || !strcmp(netns, "..")))
		return run_python();   /* not a namespace's name: the Python CLI says what it makes of it */
	if (wait_env) {
		wait_s = strtod(wait_env, &end);
		while (*end == ' ' || *end == '\t' || *end == '\n')
			end++;
		if (end == wait_env || *end || !isfinite(wait_s) || wait_s <= 0)
			return run_python();
	}
	if (!dir || !*dir)
		dir = DEFAULT_AGENT_DIR;
	if ((size_t)snprintf(addr.sun_path, sizeof(addr.sun_path), "%s/%s/agent.sock", dir,
			     netns ? netns : "host") >= sizeof(addr.sun_path))
		return run_python();
	if (access(addr.sun_path, F_OK))
		return run_python();   /* no agent for that namespace */

	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct timeval tv = {.tv_sec = (time_t)wait_s, .tv_usec = (suseconds_t)((wait_s - (time_t)wait_s) * 1e6)};
	if (tv.tv_sec == 0 && tv.tv_usec == 0)
		tv.tv_usec = 1;
	if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) ||
	    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)))
		return run_python();
	if (connect(fd, (struct sockaddr *)&addr, sizeof(addr))) {
		if (errno == EAGAIN || errno == EINPROGRESS || errno == ETIMEDOUT)
			return failed(op, "the agent takes no connection (its queue is full): it is busy (try again; "
				      "see its log if this lasts)");
		close(fd);
		return run_python();   /* nobody listens (a killed agent's socket), or not ours to use */
	}

	/* {"op": "cli", "argv": [...], "tty": [out, err], "colour": [out, err]}: client.run_cli's request */
	struct buf req = {0};
	puts_(&req, "{\"op\": \"cli\", \"argv\": [");
	for (int i = 1; i < argc; i++) {
		if (i > 1)
			puts_(&req, ", ");
		put_string(&req, argv[i]);
	}
	puts_(&req, "], \"tty\": [");
	puts_(&req, isatty(1) ? "true" : "false");
	puts_(&req, isatty(2) ? ", true" : ", false");
	puts_(&req, "], \"colour\": [");
	puts_(&req, colour(1) ? "true" : "false");
	puts_(&req, colour(2) ? ", true" : ", false");
	puts_(&req, "]}\n");

	struct buf reply = {0};
	const char *lost = NULL;
	for (size_t off = 0; off < req.len && !lost;) {
		ssize_t n = send(fd, req.p + off, req.len - off, MSG_NOSIGNAL);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return failed(op, NO_ANSWER, wait_s);
		if (n <= 0)
			lost = strerror(errno);
		else
			off += (size_t)n;
	}
	while (!lost && !(reply.len && reply.p[reply.len - 1] == '\n')) {
		char chunk[65536];
		ssize_t n = recv(fd, chunk, sizeof(chunk), 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return failed(op, NO_ANSWER, wait_s);
		if (n < 0)
			lost = strerror(errno);
		if (n <= 0)
			break;
		put(&reply, chunk, (size_t)n);
	}
	close(fd);

	struct json *doc = NULL;
	if (!lost && reply.len && reply.p[reply.len - 1] == '\n') {
		struct parser p = {.s = reply.p};
		doc = parse_value(&p);
		ws(&p);
		if (*p.s)
			doc = NULL;
	}
	struct json *ok = member(doc, "ok"), *result = member(doc, "result"), *error = member(doc, "error");
	if (!doc || doc->kind != J_OBJ || !ok || (ok->kind == J_BOOL && ok->truth && !result))
		return failed(op, "the agent did not answer%s%s%s: it closed the connection without a reply "
			      "(nothing was done here, beside the agent; see its log, and try again)",
			      lost ? " (" : "", lost ? lost : "", lost ? ")" : "");
	if (ok->kind == J_BOOL && ok->truth) {
		if (result->kind == J_NULL)
			return run_python();   /* not the agent's namespace: it did nothing */
		const char *out = text(member(result, "stdout")), *err = text(member(result, "stderr"));
		struct json *code = member(result, "code");
		if (out)
			write_all(1, out, strlen(out));
		if (err)
			write_all(2, err, strlen(err));
		return code && code->kind == J_NUM ? (int)code->num & 0xff : code && code->kind == J_NULL ? 0 : 1;
	}
	/* the agent's error (client.error_reply): its message, or "op: cause (hint)", and its exit code */
	const char *message = text(member(error, "message")), *eop = text(member(error, "op"));
	const char *cause = text(member(error, "cause")), *hint = text(member(error, "hint"));
	struct json *code = member(error, "exit_code");
	struct buf msg = {0};
	if (message) {
		puts_(&msg, message);
	} else {
		puts_(&msg, eop ? eop : "agent request");
		puts_(&msg, ": ");
		puts_(&msg, cause ? cause : "failed");
		if (hint && *hint) {
			puts_(&msg, " (");
			puts_(&msg, hint);
			puts_(&msg, ")");
		}
	}
	print_error(msg.p);
	return code && code->kind == J_NUM ? (int)code->num & 0xff : 1;
}
