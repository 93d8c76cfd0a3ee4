// SPDX-License-Identifier: GPL-2.0
/*
 * Pinnace: host-side file changes replayed as fsnotify events in the guest.
 *
 * A shared folder (virtiofs, 9p) shows readers what the host wrote, but inotify and fanotify
 * only hear of changes made through this kernel, so watchers in containers (dev servers, test
 * runners) never learn that an editor on the host saved a file. The host agent watches the
 * shared trees that containers bind-mount and writes one line per change here:
 *
 *   M <path>   the file's content changed: IN_MODIFY, then IN_CLOSE_WRITE
 *   A <path>   its attributes changed: IN_ATTRIB
 *   C <path>   it was created: IN_CREATE in its directory (IN_ISDIR for a directory)
 *   D <path>   a file was deleted: IN_DELETE in its directory
 *   X <path>   a directory was deleted: IN_DELETE | IN_ISDIR in its directory
 *
 * Events go to watchers of the path and of its directory, as if the change had been made here.
 * Nothing on the filesystem is touched. A path that no longer resolves (created and deleted on
 * the host before its line arrived) is reported by name to its directory's watchers only; one
 * whose directory is gone too is dropped. Only CAP_SYS_ADMIN may open the file (so not a default
 * container's root).
 */
#include <linux/capability.h>
#include <linux/dcache.h>
#include <linux/fs.h>
#include <linux/fsnotify.h>
#include <linux/init.h>
#include <linux/namei.h>
#include <linux/proc_fs.h>
#include <linux/slab.h>
#include <linux/string.h>
#include <linux/uaccess.h>

#define REPLAY_LINE_MAX (PATH_MAX + 4)

struct replay_line {
	size_t len;
	bool overflow;
	char data[REPLAY_LINE_MAX];
};

/* To the watchers of `name`'s directory, by name: for a path that no longer resolves. */
static void replay_by_name(__u32 mask, const char *name)
{
	const char *slash = strrchr(name, '/');
	struct path dir_path;
	struct qstr last;
	char *dir;

	if (!slash || !slash[1])
		return;
	dir = kstrndup(name, slash == name ? 1 : slash - name, GFP_KERNEL);
	if (!dir)
		return;
	if (!kern_path(dir, LOOKUP_DIRECTORY, &dir_path)) {
		struct inode *dir_inode = d_inode(dir_path.dentry);

		last = (struct qstr)QSTR_INIT(slash + 1, strlen(slash + 1));
		fsnotify_name(mask, dir_inode, FSNOTIFY_EVENT_INODE, dir_inode, &last, 0);
		path_put(&dir_path);
	}
	kfree(dir);
}

static void replay_on_path(char op, const char *name)
{
	struct path path;
	struct dentry *parent;

	if (kern_path(name, 0, &path)) {
		if (op == 'M')
			replay_by_name(FS_MODIFY, name);
		else if (op == 'C')
			replay_by_name(FS_CREATE, name);
		return;
	}
	switch (op) {
	case 'M':
		fsnotify_dentry(path.dentry, FS_MODIFY);
		fsnotify_dentry(path.dentry, FS_CLOSE_WRITE);
		break;
	case 'A':
		fsnotify_dentry(path.dentry, FS_ATTRIB);
		break;
	case 'C':
		parent = dget_parent(path.dentry);
		if (d_is_dir(path.dentry))
			fsnotify_mkdir(d_inode(parent), path.dentry);
		else
			fsnotify_create(d_inode(parent), path.dentry);
		dput(parent);
		break;
	}
	path_put(&path);
}

static void replay_line(const char *line, size_t len)
{
	if (len < 3 || line[1] != ' ' || line[2] != '/')
		return;
	switch (line[0]) {
	case 'M':
	case 'A':
	case 'C':
		replay_on_path(line[0], line + 2);
		break;
	case 'D':
		replay_by_name(FS_DELETE, line + 2);
		break;
	case 'X':
		replay_by_name(FS_DELETE | FS_ISDIR, line + 2);
		break;
	}
}

static int replay_open(struct inode *inode, struct file *file)
{
	if (!capable(CAP_SYS_ADMIN))
		return -EPERM;
	file->private_data = kzalloc(sizeof(struct replay_line), GFP_KERNEL);
	return file->private_data ? 0 : -ENOMEM;
}

static int replay_release(struct inode *inode, struct file *file)
{
	kfree(file->private_data);
	return 0;
}

/* Lines may arrive split over several writes (a pipe, an SSH channel): keep the partial one. */
static ssize_t replay_write(struct file *file, const char __user *ubuf, size_t count, loff_t *ppos)
{
	struct replay_line *line = file->private_data;
	char chunk[256];
	size_t done = 0;

	while (done < count) {
		size_t n = min(count - done, sizeof(chunk));
		size_t i;

		if (copy_from_user(chunk, ubuf + done, n))
			return done ? done : -EFAULT;
		for (i = 0; i < n; i++) {
			if (chunk[i] == '\n') {
				if (!line->overflow) {
					line->data[line->len] = '\0';
					replay_line(line->data, line->len);
				}
				line->len = 0;
				line->overflow = false;
			} else if (line->len < REPLAY_LINE_MAX - 1) {
				line->data[line->len++] = chunk[i];
			} else {
				line->overflow = true; /* too long for a path: dropped at its newline */
			}
		}
		done += n;
		cond_resched();
	}
	return count;
}

static const struct proc_ops replay_ops = {
	.proc_open = replay_open,
	.proc_write = replay_write,
	.proc_release = replay_release,
	.proc_lseek = noop_llseek,
};

static int __init pinnace_fsnotify_init(void)
{
	return proc_create("pinnace-fsnotify", 0200, NULL, &replay_ops) ? 0 : -ENOMEM;
}
late_initcall(pinnace_fsnotify_init);
