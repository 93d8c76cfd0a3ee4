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
 * Events go to watchers of the path itself and of its directory, as if the change had been made
 * here; nothing on the filesystem is touched. A create or delete is reported to the directory by
 * name even when the path no longer resolves (created and deleted on the host before its line
 * arrived); a modify or attrib of a file that is gone again is dropped (its delete follows).
 *
 * Watchers hold inodes. virtiofs gives one inode per host file, but 9p without a metadata cache
 * (cache=mmap, for coherence) makes a new inode at every lookup: the inode a container's watch
 * holds is then a "twin" of the one a path resolves to now, with the same inode number. On such a
 * filesystem the events go to every watched twin on the superblock.
 *
 * Only CAP_SYS_ADMIN may open the file (so not a default container's root).
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
#define REPLAY_TWINS_MAX 8

struct replay_line {
	size_t len;
	bool overflow;
	char data[REPLAY_LINE_MAX];
};

/* Whether lookups on this filesystem make a new inode for a file that already has one. */
static bool replay_has_twins(struct super_block *sb)
{
	return !strcmp(sb->s_type->name, "9p");
}

/*
 * The watched inodes that stand for `inode`: itself if it is watched, and on a filesystem with
 * twins every watched inode of the same number. Each one comes with a reference to drop.
 */
static int replay_watched(struct inode *inode, struct inode **found)
{
	struct super_block *sb = inode->i_sb;
	struct inode *twin;
	int n = 0;

	if (!replay_has_twins(sb)) {
		if (!inode->i_fsnotify_marks)
			return 0;
		ihold(inode);
		found[0] = inode;
		return 1;
	}
	spin_lock(&sb->s_inode_list_lock);
	list_for_each_entry(twin, &sb->s_inodes, i_sb_list) {
		if (twin->i_ino != inode->i_ino || !twin->i_fsnotify_marks)
			continue;
		spin_lock(&twin->i_lock);
		if (twin->i_state & (I_NEW | I_FREEING | I_WILL_FREE)) {
			spin_unlock(&twin->i_lock);
			continue;
		}
		__iget(twin);
		spin_unlock(&twin->i_lock);
		found[n++] = twin;
		if (n == REPLAY_TWINS_MAX)
			break;
	}
	spin_unlock(&sb->s_inode_list_lock);
	return n;
}

/* `mask` to the watched twins of `inode` (its own watchers: no name). */
static void replay_to_self(struct inode *inode, __u32 mask)
{
	struct inode *found[REPLAY_TWINS_MAX];
	int i, n = replay_watched(inode, found);

	for (i = 0; i < n; i++) {
		fsnotify_inode(found[i], mask);
		iput(found[i]);
	}
}

/* A directory entry event (create, delete) for `name` to the watchers of `dir`. */
static void replay_dirent(struct inode *dir, const struct qstr *name, __u32 mask)
{
	struct inode *found[REPLAY_TWINS_MAX];
	int i, n = replay_watched(dir, found);

	for (i = 0; i < n; i++) {
		fsnotify_name(mask, found[i], FSNOTIFY_EVENT_INODE, found[i], name, 0);
		iput(found[i]);
	}
}

/*
 * An event on the child `inode` (modify, attrib): to the watchers of its directory, with its
 * name, and to its own, without - what fsnotify_parent() does for a change made here.
 */
static void replay_on_child(struct inode *dir, struct inode *inode, const struct qstr *name, __u32 mask)
{
	struct inode *found[REPLAY_TWINS_MAX];
	int i, n;

	if (S_ISDIR(inode->i_mode))
		mask |= FS_ISDIR;
	if (!replay_has_twins(inode->i_sb)) {
		fsnotify(mask | FS_EVENT_ON_CHILD, inode, FSNOTIFY_EVENT_INODE, dir, name, inode, 0);
		return;
	}
	/* the inode a lookup just made has no watchers; its watched twins get theirs below */
	n = replay_watched(dir, found);
	for (i = 0; i < n; i++) {
		fsnotify(mask | FS_EVENT_ON_CHILD, inode, FSNOTIFY_EVENT_INODE, found[i], name, inode, 0);
		iput(found[i]);
	}
	replay_to_self(inode, mask);
}

static void replay_line(const char *line, size_t len)
{
	const char *name = line + 2, *slash;
	struct path dir_path, path;
	struct qstr last;
	bool is_dir = false;
	__u32 mask;
	char *dir;

	if (len < 3 || line[1] != ' ' || line[2] != '/')
		return;
	switch (line[0]) {
	case 'M': mask = FS_MODIFY; break;
	case 'A': mask = FS_ATTRIB; break;
	case 'C': mask = FS_CREATE; break;
	case 'D': mask = FS_DELETE; break;
	case 'X': mask = FS_DELETE; is_dir = true; break;
	default: return;
	}
	slash = strrchr(name, '/');
	if (!slash[1])
		return;
	last = (struct qstr)QSTR_INIT(slash + 1, strlen(slash + 1));
	dir = kstrndup(name, slash == name ? 1 : slash - name, GFP_KERNEL);
	if (!dir)
		return;
	if (kern_path(dir, LOOKUP_DIRECTORY, &dir_path))
		goto out;
	if (mask == FS_CREATE || mask == FS_DELETE) {
		if (mask == FS_CREATE && !kern_path(name, 0, &path)) {
			is_dir = d_is_dir(path.dentry);
			path_put(&path);
		}
		replay_dirent(d_inode(dir_path.dentry), &last, mask | (is_dir ? FS_ISDIR : 0));
	} else if (!kern_path(name, 0, &path)) {
		/* a file already gone again has no inode to be modified: its delete follows */
		replay_on_child(d_inode(dir_path.dentry), d_inode(path.dentry), &last, mask);
		if (mask == FS_MODIFY)
			replay_on_child(d_inode(dir_path.dentry), d_inode(path.dentry), &last, FS_CLOSE_WRITE);
		path_put(&path);
	}
	path_put(&dir_path);
out:
	kfree(dir);
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
